import { request, Agent } from 'node:http'
import type { IncomingMessage } from 'node:http'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import { CLAIM_FORMAT, CLAIM_ID_BYTES, signClaim, writerTrust } from '@strata/records'
import type { StepClaim, WriterKey } from '@strata/records'
import type { BlockSource, CommitOptions, GcReport, LayerCheck, LayerInfo, LayerVerification, ProgressEvent, RestoreOptions, Store } from '@strata/store'
import { ControlError } from './errors.ts'
import { CLAIM_LEASE_MS, CLAIM_RENEW_MS, SOCKET_NAME, layerOf } from './protocol.ts'
import type { ClaimJson, ClaimWaitJson, EntryJson, ErrorJson, FetchJson, LayerJson, LookupJson, StatusJson } from './protocol.ts'

export interface RemoteResolve {
  layer: LayerInfo
  providers: number
  bytes: number
  durationMs: number
}

/**
 * A fleet claim on a key (the runner's `RemoteCache.claim`): `granted`, this node
 * builds and must `release` when done; `held`, the peer `holder` builds, and
 * `settled` says when that ended: its record arrived, it was released, its lease
 * expired, or `timeoutMs` passed.
 */
export type FleetClaim =
  | { status: 'granted', release (outcome: 'built' | 'failed'): Promise<void> }
  | { status: 'held', holder: string,
      settled (opts: { signal?: AbortSignal, timeoutMs: number }): Promise<'record' | 'released' | 'expired' | 'timeout'> }

/**
 * Talks to a running daemon over its control socket. It is a `Store` (the daemon
 * holds the store's lock, so the runner reaches the store through it) plus the
 * fleet operations: lookup, resolve (lookup + fetch), publish, status.
 */
export class DaemonClient implements Store {
  readonly dataDir: string
  readonly socketPath: string
  readonly trustedWriters: readonly string[] | null
  /** The daemon's trust epoch: the runner writes its records in it and refuses older ones. */
  readonly epoch: number
  // Idle sockets close on this side well before the daemon's keepAliveTimeout (control.ts).
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 8, timeout: 30_000 })

  constructor (socketPath: string, dataDir: string, trustedWriters: readonly string[] | null, epoch = 0) {
    this.socketPath = socketPath
    this.dataDir = dataDir
    this.trustedWriters = trustedWriters
    this.epoch = epoch
  }

  /** Whether the daemon accepts records signed by `peer` in `scope` (it checked them before storing). */
  trusts (peer: string, scope: string): boolean {
    if (this.trustedWriters === null) return true
    this.#writers ??= writerTrust(this.trustedWriters)
    return this.#writers(peer, scope)
  }

  #writers: ((peer: string, scope: string) => boolean) | undefined
  #claimSigner: WriterKey | undefined
  #peerId: string | undefined

  /** Signs this client's claims with `key` (what it signs its records with); without one the daemon's identity signs them. */
  signClaimsWith (key: WriterKey | undefined): void {
    this.#claimSigner = key
  }

  /**
   * Claims `key` in the fleet before building it (see FleetClaim). While granted,
   * the claim is renewed every CLAIM_RENEW_MS over the socket: when this process
   * dies the renewals stop, and peers see the lease expire.
   */
  async claim (key: string, opts: { scope: string, signal?: AbortSignal }): Promise<FleetClaim> {
    const signer = this.#claimSigner
    const signed = (c: StepClaim): string => Buffer.from(signClaim(c, signer!)).toString('base64')
    const ask = async (signal?: AbortSignal): Promise<{ out: ClaimJson, claim: StepClaim | undefined }> => {
      let claim: StepClaim | undefined
      if (signer !== undefined) {
        this.#peerId ??= (await this.status({ copies: false, signal })).peerId
        claim = { v: CLAIM_FORMAT, key: CID.parse(key), claimant: this.#peerId, writer: signer.id, scope: opts.scope, epoch: this.epoch, id: randomBytes(CLAIM_ID_BYTES), leaseMs: CLAIM_LEASE_MS, seq: 0, release: false }
      }
      const out = await this.#call('/v1/claim', { key, scope: opts.scope, ...(claim !== undefined ? { envelope: signed(claim) } : {}) }, { signal }) as unknown as ClaimJson
      // Our own claim lost to a simultaneous one: only we can sign its release.
      if (out.status === 'held' && out.own !== undefined && claim !== undefined) {
        await this.#call('/v1/claim/release', { id: out.own, envelope: signed({ ...claim, seq: 1, release: true }) }).catch(() => {})
      }
      return { out, claim }
    }
    const first = await ask(opts.signal)
    if (first.out.status === 'held') {
      const held = first.out
      return {
        status: 'held',
        holder: held.holder,
        settled: async (o) => (await this.#call('/v1/claim/wait', { key, scope: opts.scope, id: held.id, timeoutMs: Math.max(0, Math.round(o.timeoutMs)) }, { signal: o.signal }) as unknown as ClaimWaitJson).outcome
      }
    }
    // The claim this client renews: a new one after the daemon lost it (restarted, or the lease ran out while this process stalled).
    let current = { id: first.out.id, claim: first.claim, seq: 0 }
    let timer: NodeJS.Timeout | undefined
    let released = false
    const renew = async (): Promise<void> => {
      const c = current
      c.seq++
      try {
        await this.#call('/v1/claim/renew', { id: c.id, ...(c.claim !== undefined ? { envelope: signed({ ...c.claim, seq: c.seq }) } : {}) })
      } catch (err) {
        // Anything but a lost claim (a daemon restarting, say): try again next time.
        if ((err as { code?: string }).code === 'ERR_CLAIM_NOT_FOUND' && !released) {
          // Claimed again while this process still builds; if another node holds the key by now, both build.
          const again = await ask().catch(() => undefined)
          if (again?.out.status === 'held') return
          if (again?.out.status === 'granted') current = { id: again.out.id, claim: again.claim, seq: 0 }
        }
      }
      if (!released) schedule()
    }
    const schedule = (): void => {
      timer = setTimeout(() => { void renew() }, CLAIM_RENEW_MS)
      // The claim must not keep a finished process alive.
      timer.unref()
    }
    schedule()
    return {
      status: 'granted',
      release: async (outcome) => {
        if (released) return
        released = true
        clearTimeout(timer)
        const c = current
        await this.#call('/v1/claim/release', { id: c.id, outcome, ...(c.claim !== undefined ? { envelope: signed({ ...c.claim, seq: c.seq + 1, release: true }) } : {}) })
      }
    }
  }

  async #call (path: string, body: object, opts: { signal?: AbortSignal, onLine?: (line: Record<string, unknown>) => void } = {}): Promise<Record<string, unknown>> {
    return await new Promise((resolve, reject) => {
      const data = Buffer.from(JSON.stringify(body))
      const req = request({
        socketPath: this.socketPath,
        path,
        method: 'POST',
        agent: this.#agent,
        headers: { 'content-type': 'application/json', 'content-length': data.length },
        signal: opts.signal
      }, (res) => {
        const ndjson = (res.headers['content-type'] ?? '').includes('ndjson')
        let buf = ''
        let last: Record<string, unknown> | undefined
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          buf += chunk
          if (!ndjson) return
          let nl: number
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>
            buf = buf.slice(nl + 1)
            if (line.type === 'progress') opts.onLine?.(line)
            else last = line
          }
        })
        res.on('error', reject)
        res.on('end', () => {
          try {
            const out = ndjson ? last : JSON.parse(buf) as Record<string, unknown>
            if (out === undefined) throw new ControlError('ERR_CONTROL', res.statusCode ?? 0, `no answer to ${path}`)
            const err = (out as Partial<ErrorJson>).error
            if (err !== undefined || (res.statusCode ?? 500) >= 400) {
              reject(new ControlError(err?.code ?? 'ERR_CONTROL', res.statusCode ?? 0, err?.message ?? `${path} failed`))
              return
            }
            resolve(out)
          } catch (e) {
            reject(e instanceof ControlError ? e : new ControlError('ERR_CONTROL', res.statusCode ?? 0, `bad answer to ${path}`, { cause: e }))
          }
        })
      })
      req.on('error', (err) => reject(opts.signal?.aborted === true ? err : new ControlError('ERR_CONTROL_UNREACHABLE', 0, `cannot reach the daemon at ${this.socketPath}: ${err.message}`, { cause: err })))
      req.end(data)
    })
  }

  /** `liveHeap`: the daemon collects its heap first and reports what is live (`process.heapLive`); a full collection, for measuring, not for every call. */
  async status (opts: { signal?: AbortSignal, copies?: boolean, liveHeap?: boolean } = {}): Promise<StatusJson> {
    return await this.#call('/v1/status', { copies: opts.copies ?? true, ...(opts.liveHeap === true ? { liveHeap: true } : {}) }, opts) as unknown as StatusJson
  }

  async lookup (key: string, opts: { signal?: AbortSignal, scopes?: readonly string[] } = {}): Promise<LookupJson> {
    return await this.#call('/v1/lookup', { key, scopes: opts.scopes }, opts) as unknown as LookupJson
  }

  /** Looks `key` up in the fleet (in `scopes`, in order; default the daemon's) and fetches its layer into the daemon's store. */
  async resolve (key: string, opts: { signal?: AbortSignal, scopes?: readonly string[], onProgress?: (e: ProgressEvent) => void } = {}): Promise<RemoteResolve> {
    const out = await this.#call('/v1/resolve', { key, scopes: opts.scopes }, { signal: opts.signal, onLine: (l) => opts.onProgress?.(l as unknown as ProgressEvent) }) as unknown as FetchJson
    return { layer: layerOf(out.layer), providers: out.providers, bytes: out.bytes, durationMs: out.durationMs }
  }

  async publish (key: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#call('/v1/publish', { key }, opts)
  }

  /** One collection in the daemon's store; sizes default to the daemon's budget. */
  async gc (opts: { maxSize?: number, hardLimit?: number, dryRun?: boolean, signal?: AbortSignal } = {}): Promise<GcReport> {
    const { signal, ...body } = opts
    return await this.#call('/v1/gc', body, { signal }) as unknown as GcReport
  }

  /** Counts a lookup outcome in the daemon's metrics. */
  async report (source: 'local' | 'peer' | 'miss', opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#call('/v1/event', { source }, opts)
  }

  // ---- Store ----

  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    return layerOf(await this.#call('/v1/store/commit', { dir, keepSource: opts.keepSource === true }, opts) as unknown as LayerJson)
  }

  async has (root: CID): Promise<boolean> {
    return (await this.getLayer(root)) !== undefined
  }

  async getLayer (root: CID): Promise<LayerInfo | undefined> {
    const out = await this.#call('/v1/store/layer', { root: root.toString() })
    return out.layer === null ? undefined : layerOf(out.layer as LayerJson)
  }

  async checkLayer (root: CID, opts: { signal?: AbortSignal } = {}): Promise<LayerCheck> {
    const out = await this.#call('/v1/store/check', { root: root.toString() }, opts)
    if (out.status === 'ok') return { status: 'ok', layer: layerOf(out.layer as LayerJson) }
    return out as unknown as LayerCheck
  }

  /** Re-hashes layers in the daemon's store (all when `roots` is empty), marking the corrupt ones. */
  async verify (roots: readonly string[], opts: { signal?: AbortSignal } = {}): Promise<LayerVerification[]> {
    return (await this.#call('/v1/store/verify', { roots }, opts)).layers as LayerVerification[]
  }

  async listLayers (): Promise<LayerInfo[]> {
    return ((await this.#call('/v1/store/layers', {})).layers as LayerJson[]).map(layerOf)
  }

  /** A layer's entries as the daemon's store lists them, streamed. Throws ControlError (`ERR_LAYER_NOT_FOUND` when it has no such layer). */
  async * entries (root: CID, opts: { signal?: AbortSignal } = {}): AsyncGenerator<EntryJson> {
    const data = Buffer.from(JSON.stringify({ root: root.toString() }))
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, path: '/v1/store/entries', method: 'POST', agent: this.#agent, headers: { 'content-type': 'application/json', 'content-length': data.length }, signal: opts.signal }, resolve)
      req.on('error', (err) => reject(opts.signal?.aborted === true ? err : new ControlError('ERR_CONTROL_UNREACHABLE', 0, `cannot reach the daemon at ${this.socketPath}: ${err.message}`, { cause: err })))
      req.end(data)
    })
    res.setEncoding('utf8')
    let buf = ''
    let done = false
    const fail = (line: Partial<ErrorJson>): ControlError => new ControlError(line.error?.code ?? 'ERR_CONTROL', res.statusCode ?? 0, line.error?.message ?? '/v1/store/entries failed')
    if ((res.statusCode ?? 500) >= 400) {
      for await (const chunk of res) buf += chunk as string
      let body: Partial<ErrorJson> = {}
      try {
        body = JSON.parse(buf) as Partial<ErrorJson>
      } catch {
        // Not our JSON: the status code alone is reported.
      }
      throw fail(body)
    }
    for await (const chunk of res) {
      buf += chunk as string
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as { type?: string, entry?: EntryJson } & Partial<ErrorJson>
        buf = buf.slice(nl + 1)
        if (line.type === 'entry' && line.entry !== undefined) yield line.entry
        else if (line.type === 'error') throw fail(line)
        else if (line.type === 'done') done = true
      }
    }
    if (!done) throw new ControlError('ERR_CONTROL', res.statusCode ?? 0, 'the daemon ended the entry list early')
  }

  /** Writes a layer into the empty directory `dest` (absolute), as `store.unpack` does, in the daemon. */
  async unpack (root: CID, dest: string, opts: { signal?: AbortSignal } = {}): Promise<{ entries: number, bytes: number }> {
    return await this.#call('/v1/store/unpack', { root: root.toString(), dest }, opts) as unknown as { entries: number, bytes: number }
  }

  async removeLayer (root: CID): Promise<void> {
    await this.#call('/v1/store/remove', { root: root.toString() })
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    return Buffer.from((await this.#call('/v1/store/block', { cid: cid.toString() }, opts)).bytes as string, 'base64')
  }

  async hasBlock (cid: CID): Promise<boolean> {
    return (await this.#call('/v1/store/has-block', { cid: cid.toString() })).has === true
  }

  /** The daemon restores from the fleet, not from `source` (a source cannot cross the socket). */
  async restore (root: CID, _source: BlockSource, opts: RestoreOptions = {}): Promise<LayerInfo> {
    const out = await this.#call('/v1/fetch', { root: root.toString() }, { signal: opts.signal, onLine: (l) => opts.onProgress?.(l as unknown as ProgressEvent) }) as unknown as FetchJson
    return layerOf(out.layer)
  }

  async putRecord (key: string, value: Uint8Array): Promise<void> {
    await this.#call('/v1/store/record/put', { key, value: Buffer.from(value).toString('base64') })
  }

  async getRecord (key: string): Promise<Uint8Array | undefined> {
    const v = (await this.#call('/v1/store/record/get', { key })).value
    return typeof v === 'string' ? Buffer.from(v, 'base64') : undefined
  }

  async close (): Promise<void> {
    this.#agent.destroy()
  }
}

/**
 * A client for the daemon serving `dataDir`, or undefined when none answers there
 * (no socket, or a stale one left by a daemon that died).
 */
export async function connectDaemon (dataDir: string, opts: { signal?: AbortSignal } = {}): Promise<DaemonClient | undefined> {
  const socketPath = `${dataDir}/${SOCKET_NAME}`
  if (!existsSync(socketPath)) return undefined
  const probe = new DaemonClient(socketPath, dataDir, null)
  try {
    const status = await probe.status({ copies: false, signal: AbortSignal.any([AbortSignal.timeout(5000), ...(opts.signal !== undefined ? [opts.signal] : [])]) })
    return new DaemonClient(socketPath, status.dataDir, status.trustedWriters, status.epoch)
  } catch (err) {
    if (err instanceof ControlError && err.code === 'ERR_CONTROL_UNREACHABLE') return undefined
    throw err
  } finally {
    await probe.close()
  }
}
