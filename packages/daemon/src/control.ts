import { createServer } from 'node:http'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { once } from 'node:events'
import { chmodSync, rmSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Entry } from '@strata/chunker'
import { checkScope, MAX_READ_SCOPES } from '@strata/records'
import type { StepRecord } from '@strata/records'
import type { CommitOptions, GcReport, LayerInfo, LocalStore, ProgressEvent, Store } from '@strata/store'
import { BadRequestError } from './errors.ts'
import type { GcBudgetInit } from './gc.ts'
import type { ClaimService } from './claims.ts'
import { MAX_WAIT_MS } from './claims.ts'
import type { FetchResult } from './layer-fetch.ts'
import { MAX_REQUEST_BYTES, entryJson, layerJson } from './protocol.ts'
import type { ClaimJson, ClaimWaitJson, DaemonStatus, ErrorJson, FetchJson, LookupJson, StatusJson } from './protocol.ts'
import type { LookupResult } from './record-service.ts'

/** What the control API needs from the daemon. */
export interface ControlComponents {
  dataDir: string
  store: Pick<Store, 'getLayer' | 'listLayers' | 'getBlock' | 'hasBlock' | 'getRecord' | 'checkLayer'> & Pick<LocalStore, 'layerRoots' | 'verifyLayer'> & {
    entries(root: CID): AsyncIterable<Entry>
    unpack(root: CID, dest: string, opts?: { signal?: AbortSignal }): Promise<{ entries: number, bytes: number }>
  }
  /** The size budget, when the daemon has one: `/v1/gc`'s default sizes. */
  budget: GcBudgetInit | undefined
  status(opts: { signal?: AbortSignal, copies?: boolean, liveHeap?: boolean }): Promise<DaemonStatus>
  lookup(key: CID, opts: { signal?: AbortSignal, scopes?: readonly string[] }): Promise<LookupResult>
  resolve(key: CID, opts: { signal?: AbortSignal, scopes?: readonly string[], onProgress?: (e: ProgressEvent) => void }): Promise<FetchResult & { recordSource: string }>
  fetchLayer(root: CID, opts: { signal?: AbortSignal, onProgress?: (e: ProgressEvent) => void }): Promise<FetchResult>
  publish(key: CID, opts: { signal?: AbortSignal, scope?: string }): Promise<StepRecord>
  commit(dir: string, opts: CommitOptions): Promise<LayerInfo>
  removeLayer(root: CID, opts: { signal?: AbortSignal }): Promise<void>
  gc(opts: { maxSize: number, hardLimit?: number | undefined, dryRun?: boolean, signal?: AbortSignal }): Promise<GcReport>
  putRecord(key: string, value: Uint8Array): Promise<void>
  /** Counts a lookup outcome the runner reports. */
  countHit(source: 'local' | 'peer' | 'miss'): void
  /** One build per key across the fleet. */
  claims: Pick<ClaimService, 'claim' | 'renew' | 'release' | 'wait'>
}

/** The HTTP status of a failed request, by the error's code; anything else is a 500. */
const STATUS_OF: Readonly<Record<string, number>> = {
  ERR_BAD_REQUEST: 400,
  ERR_NOT_FOUND: 404,
  ERR_RECORD_NOT_FOUND: 404,
  ERR_NO_PROVIDERS: 404,
  ERR_LAYER_NOT_FOUND: 404,
  ERR_BLOCK_NOT_FOUND: 404,
  ERR_CLAIM_NOT_FOUND: 404,
  ERR_CLAIMS_BUSY: 503
}

type Body = Record<string, unknown>
type Handler = (body: Body, res: ServerResponse, signal: AbortSignal) => Promise<unknown>

const str = (body: Body, name: string): string => {
  const v = body[name]
  if (typeof v !== 'string' || v === '') throw new BadRequestError(`"${name}" must be a non-empty string`)
  return v
}
const cid = (body: Body, name: string): CID => {
  try {
    return CID.parse(str(body, name))
  } catch (err) {
    throw new BadRequestError(`"${name}" is not a CID`, { cause: err })
  }
}

/** A scope (`name`), checked. */
function scopeOf (body: Body, name: string): string {
  try {
    return checkScope(body[name])
  } catch (err) {
    throw new BadRequestError(`"${name}": ${(err as Error).message}`, { cause: err })
  }
}

/** An optional signed claim, base64 (`name`). */
function envelopeOf (body: Body, name: string): Uint8Array | undefined {
  const v = body[name]
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.length > 4096) throw new BadRequestError(`"${name}" must be a signed claim in base64`)
  return Buffer.from(v, 'base64')
}

const CLAIM_ID = /^[0-9a-f]{32}$/
function claimId (body: Body, name: string): string {
  const v = str(body, name)
  if (!CLAIM_ID.test(v)) throw new BadRequestError(`"${name}" must be a claim id (32 hex digits)`)
  return v
}

/** An optional list of scopes (`scopes`), each checked; undefined when absent. */
function scopes (body: Record<string, unknown>): string[] | undefined {
  const v = body.scopes
  if (v === undefined) return undefined
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_READ_SCOPES) throw new BadRequestError(`"scopes" must be a list of 1 to ${MAX_READ_SCOPES} scopes`)
  try {
    return v.map(checkScope)
  } catch (err) {
    throw new BadRequestError((err as Error).message, { cause: err })
  }
}

/** Writes NDJSON: progress lines while `work` runs, then its result or error as the last line. */
function errorJson (err: unknown): ErrorJson {
  const e = err as Error & { code?: string }
  return { error: { code: e.code ?? 'ERR_INTERNAL', message: e.message } }
}

async function streamed (res: ServerResponse, work: (progress: (e: unknown) => void) => Promise<FetchJson>): Promise<undefined> {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' })
  let last = 0
  const progress = (e: unknown): void => {
    const now = Date.now()
    if (now - last < 100) return
    last = now
    res.write(JSON.stringify({ type: 'progress', ...(e as object) }) + '\n')
  }
  try {
    const result = await work(progress)
    res.end(JSON.stringify({ type: 'done', ...(result as object) }) + '\n')
  } catch (err) {
    res.end(JSON.stringify({ type: 'error', ...errorJson(err) }) + '\n')
  }
  return undefined
}

export function routes (daemon: ControlComponents): Map<string, Handler> {
  const store = daemon.store
  const r = new Map<string, Handler>()
  r.set('/v1/status', async (b, _res, signal): Promise<StatusJson> => ({ ...await daemon.status({ signal, copies: b.copies !== false, liveHeap: b.liveHeap === true }), dataDir: daemon.dataDir }))
  r.set('/v1/lookup', async (b, _res, signal): Promise<LookupJson> => {
    const found = await daemon.lookup(cid(b, 'key'), { signal, scopes: scopes(b) })
    return { layer: found.record.layer.toString(), producer: found.record.producer, envelope: Buffer.from(found.envelope).toString('base64'), source: found.source }
  })
  r.set('/v1/resolve', async (b, res, signal) => await streamed(res, async (progress) => {
    const got = await daemon.resolve(cid(b, 'key'), { signal, onProgress: progress, scopes: scopes(b) })
    return { layer: layerJson(got.layer), providers: got.providers, bytes: got.bytes, durationMs: got.durationMs, recordSource: got.recordSource }
  }))
  r.set('/v1/fetch', async (b, res, signal) => await streamed(res, async (progress) => {
    const got = await daemon.fetchLayer(cid(b, 'root'), { signal, onProgress: progress })
    return { layer: layerJson(got.layer), providers: got.providers, bytes: got.bytes, durationMs: got.durationMs }
  }))
  r.set('/v1/publish', async (b, _res, signal) => {
    const record = await daemon.publish(cid(b, 'key'), { signal, scope: scopes(b)?.[0] })
    return { key: record.key.toString(), layer: record.layer.toString() }
  })
  r.set('/v1/event', async (b) => {
    const source = str(b, 'source')
    if (source !== 'local' && source !== 'peer' && source !== 'miss') throw new BadRequestError('"source" must be local, peer or miss')
    daemon.countHit(source)
    return {}
  })
  // One build per key: a claim, its renewals and release, and a wait on another's claim (see claims.ts).
  r.set('/v1/claim', async (b, _res, signal): Promise<ClaimJson> => await daemon.claims.claim(cid(b, 'key'), scopeOf(b, 'scope'), { envelope: envelopeOf(b, 'envelope'), signal }))
  r.set('/v1/claim/renew', async (b) => {
    await daemon.claims.renew(claimId(b, 'id'), { envelope: envelopeOf(b, 'envelope') })
    return {}
  })
  r.set('/v1/claim/release', async (b) => {
    const outcome = b.outcome
    if (outcome !== undefined && outcome !== 'built' && outcome !== 'failed') throw new BadRequestError('"outcome" must be built or failed')
    await daemon.claims.release(claimId(b, 'id'), { envelope: envelopeOf(b, 'envelope'), outcome })
    return {}
  })
  r.set('/v1/claim/wait', async (b, _res, signal): Promise<ClaimWaitJson> => {
    const t = b.timeoutMs
    if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0 || t > MAX_WAIT_MS) throw new BadRequestError(`"timeoutMs" must be a whole number of milliseconds up to ${MAX_WAIT_MS}`)
    return { outcome: await daemon.claims.wait(cid(b, 'key'), scopeOf(b, 'scope'), claimId(b, 'id'), { timeoutMs: t, signal }) }
  })
  r.set('/v1/store/commit', async (b, _res, signal) => layerJson(await daemon.commit(str(b, 'dir'), { keepSource: b.keepSource === true, signal })))
  r.set('/v1/store/layer', async (b) => {
    const l = await store.getLayer(cid(b, 'root'))
    return { layer: l !== undefined ? layerJson(l) : null }
  })
  r.set('/v1/store/check', async (b, _res, signal) => {
    const c = await store.checkLayer(cid(b, 'root'), { signal })
    return c.status === 'ok' ? { status: 'ok', layer: layerJson(c.layer) } : c
  })
  r.set('/v1/store/verify', async (b, _res, signal) => {
    const given = b.roots ?? []
    if (!Array.isArray(given) || given.length > 10_000) throw new BadRequestError('"roots" must be a list of at most 10000 layer CIDs')
    const roots = given.length > 0 ? given.map((r) => cid({ root: r }, 'root').toString()) : (await store.layerRoots()).sort()
    const out = []
    for (const root of roots) out.push(await store.verifyLayer(root, { signal }))
    return { layers: out }
  })
  r.set('/v1/store/layers', async () => ({ layers: (await store.listLayers()).map(layerJson) }))
  // `strata unpack` while the daemon holds the store: the daemon writes the layer into `dest` (an absolute path on this machine).
  r.set('/v1/store/unpack', async (b, _res, signal) => {
    const dest = str(b, 'dest')
    if (!dest.startsWith('/')) throw new BadRequestError('"dest" must be an absolute path')
    return await store.unpack(cid(b, 'root'), dest, { signal })
  })
  // A layer's entries, one NDJSON line each, as fast as the reader takes them (`strata ls` while the daemon holds the store).
  r.set('/v1/store/entries', async (b, res, signal) => {
    const root = cid(b, 'root')
    if (await store.getLayer(root) === undefined) throw Object.assign(new Error(`no layer ${root.toString()} in the store`), { code: 'ERR_LAYER_NOT_FOUND' })
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    try {
      for await (const e of store.entries(root)) {
        if (signal.aborted) break
        if (!res.write(JSON.stringify({ type: 'entry', entry: entryJson(e) }) + '\n')) await once(res, 'drain', { signal })
      }
      res.end(JSON.stringify({ type: 'done' }) + '\n')
    } catch (err) {
      res.end(JSON.stringify({ type: 'error', ...errorJson(err) }) + '\n')
    }
    return undefined
  })
  r.set('/v1/store/remove', async (b, _res, signal) => {
    await daemon.removeLayer(cid(b, 'root'), { signal })
    return {}
  })
  r.set('/v1/gc', async (b, _res, signal) => {
    const size = (name: string): number | undefined => {
      const v = b[name]
      if (v === undefined) return undefined
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new BadRequestError(`"${name}" must be a whole number of bytes`)
      return v
    }
    const maxSize = size('maxSize') ?? daemon.budget?.maxSize
    if (maxSize === undefined) throw new BadRequestError('"maxSize" is required: this daemon has no size budget')
    const hardLimit = size('hardLimit') ?? (b.maxSize === undefined ? daemon.budget?.hardLimit : undefined)
    try {
      return await daemon.gc({ maxSize, hardLimit, dryRun: b.dryRun === true, signal })
    } catch (err) {
      throw err instanceof TypeError ? new BadRequestError(err.message, { cause: err }) : err
    }
  })
  r.set('/v1/store/block', async (b, _res, signal) => ({ bytes: Buffer.from(await store.getBlock(cid(b, 'cid'), { signal })).toString('base64') }))
  r.set('/v1/store/has-block', async (b) => ({ has: await store.hasBlock(cid(b, 'cid')) }))
  r.set('/v1/store/record/get', async (b) => {
    const v = await store.getRecord(str(b, 'key'))
    return { value: v !== undefined ? Buffer.from(v).toString('base64') : null }
  })
  r.set('/v1/store/record/put', async (b) => {
    await daemon.putRecord(str(b, 'key'), Buffer.from(str(b, 'value'), 'base64'))
    return {}
  })
  return r
}

async function readBody (req: IncomingMessage): Promise<Body> {
  let size = 0
  const chunks: Buffer[] = []
  for await (const c of req) {
    size += (c as Buffer).length
    if (size > MAX_REQUEST_BYTES) throw new BadRequestError(`request body over ${MAX_REQUEST_BYTES} bytes`)
    chunks.push(c as Buffer)
  }
  if (size === 0) return {}
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString()) as unknown
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object')
    return v as Body
  } catch (err) {
    throw new BadRequestError('the body is not a JSON object', { cause: err })
  }
}

/** How long an idle kept-alive control connection stays open on the daemon's side. */
export const SERVER_IDLE_MS = 60_000

/** Listens on `socketPath` (mode 0600: only root talks to the daemon). */
export async function startControl (daemon: ControlComponents, socketPath: string, log: Logger): Promise<Server> {
  const table = routes(daemon)
  const server = createServer((req, res) => {
    const ac = new AbortController()
    res.on('close', () => { if (!res.writableFinished) ac.abort(new Error('client went away')) })
    void (async () => {
      try {
        const handler = table.get(req.url ?? '')
        if (req.method !== 'POST' || handler === undefined) {
          const body: ErrorJson = { error: { code: 'ERR_NOT_FOUND', message: `no ${req.method ?? ''} ${req.url ?? ''}` } }
          res.writeHead(STATUS_OF.ERR_NOT_FOUND!, { 'content-type': 'application/json' }).end(JSON.stringify(body))
          return
        }
        const result = await handler(await readBody(req), res, ac.signal)
        if (result !== undefined) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(result))
      } catch (err) {
        const body = errorJson(err)
        log.debug({ err, url: req.url }, 'control request failed')
        if (!res.headersSent) res.writeHead(STATUS_OF[body.error.code] ?? 500, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
    })()
  })
  // The client drops an idle kept-alive socket first (CLIENT_IDLE_MS): a server closing it
  // while the client reuses it is a request lost with ECONNRESET.
  server.keepAliveTimeout = SERVER_IDLE_MS
  rmSync(socketPath, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  chmodSync(socketPath, 0o600)
  return server
}
