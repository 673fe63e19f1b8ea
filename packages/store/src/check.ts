import { existsSync } from 'node:fs'
import { BlockMismatchError } from '@strata/chunker'
import type { Entry } from '@strata/chunker'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { FPRINT, LAYER } from './keys.ts'
import { encodeJson, layerInfo, readMeta } from './meta.ts'
import type { LayerMeta } from './meta.ts'
import { decodeFingerprint, fingerprint } from './fingerprint.ts'
import { verifyTree } from './verify.ts'
import type { LayerCheck, LayerVerification, VerifyOptions } from './types.ts'

/** What checking layers needs of the rest of the store. */
export interface CheckDeps {
  db: Index
  log: Logger
  layerDir: (root: string) => string
  /** The layer's manifest entries, in order. */
  entries: (root: CID) => AsyncIterable<Entry>
}

/**
 * Marks a layer corrupt, once: it is never offered again (a hit, a mount, a
 * restore's source) and the next collection removes it.
 */
export async function markCorrupt (deps: Pick<CheckDeps, 'db' | 'log'>, root: string, why: { path?: string, reason?: string }): Promise<void> {
  const meta = await readMeta(deps.db, root)
  if (meta === undefined || meta.corrupt === true) return
  meta.corrupt = true
  if (why.path !== undefined) meta.corruptPath = why.path
  if (why.reason !== undefined) meta.corruptReason = why.reason
  await deps.db.put(LAYER.key(root), encodeJson(meta))
  deps.log.error({ event: 'layer-corrupt', layer: root, path: why.path, reason: why.reason }, 'layer marked corrupt: it is not what its manifest says and will not be used again')
}

/** The hit check: the layer's dir walked with lstat against the fingerprint taken at commit. */
export async function checkLayer (deps: CheckDeps, root: CID, opts: { signal?: AbortSignal } = {}): Promise<LayerCheck> {
  const key = root.toString()
  const dir = deps.layerDir(key)
  const meta = await readMeta(deps.db, key)
  if (meta === undefined || !existsSync(dir)) return { status: 'missing', root: key }
  const corrupt = (m: LayerMeta): LayerCheck => ({
    status: 'corrupt',
    root: key,
    ...(m.corruptPath !== undefined ? { path: m.corruptPath } : {}),
    ...(m.corruptReason !== undefined ? { reason: m.corruptReason } : {})
  })
  if (meta.corrupt === true) return corrupt(meta)
  const raw = await deps.db.get(FPRINT.key(key))
  // Layers indexed before fingerprints were kept have none to compare with.
  const want = raw === undefined ? undefined : decodeFingerprint(raw)
  if (want !== undefined) {
    let got
    try {
      got = await fingerprint(dir, opts)
    } catch (err) {
      // Not a hit, and no mark: the dir may be on its way out, or the walk short of descriptors.
      if (opts.signal?.aborted === true) throw err
      deps.log.warn({ err, layer: key }, 'cannot walk a layer dir to check it: not a hit')
      return { status: 'missing', root: key }
    }
    if (got.digest !== want.digest) {
      await markCorrupt(deps, key, { reason: 'stat' })
      return corrupt({ ...meta, corruptReason: 'stat' })
    }
  }
  return { status: 'ok', layer: layerInfo(root, dir, meta) }
}

/** Re-reads a layer's dir against its manifest (verify.ts); marks it corrupt when it differs. */
export async function verifyLayer (deps: CheckDeps, root: CID | string, opts: VerifyOptions = {}): Promise<LayerVerification> {
  const key = root.toString()
  const cid = typeof root === 'string' ? CID.parse(root) : root
  const meta = await readMeta(deps.db, key)
  if (meta === undefined) return { root: key, status: 'missing', files: 0, bytes: 0 }
  if (meta.corrupt === true) {
    return { root: key, status: 'corrupt', files: 0, bytes: 0, marked: true, ...(meta.corruptPath !== undefined ? { path: meta.corruptPath } : {}), ...(meta.corruptReason !== undefined ? { reason: meta.corruptReason } : {}) }
  }
  let bad: { path?: string, problem: string } | undefined
  let files = 0
  let bytes = 0
  const dir = deps.layerDir(key)
  if (!existsSync(dir)) bad = { problem: 'missing', path: '.' }
  else {
    try {
      const check = await verifyTree(dir, deps.entries(cid), { untrusted: meta.untrusted === true, signal: opts.signal, onRead: opts.onRead })
      files = check.files
      bytes = check.bytes
      bad = check.bad
    } catch (err) {
      if (opts.signal?.aborted === true) throw err
      // A manifest block in the index that no longer hashes to its CID.
      if (!(err instanceof BlockMismatchError)) throw err
      bad = { problem: 'manifest' }
    }
  }
  if (bad === undefined) return { root: key, status: 'ok', files, bytes }
  await markCorrupt(deps, key, { reason: bad.problem, ...(bad.path !== undefined ? { path: bad.path } : {}) })
  return { root: key, status: 'corrupt', files, bytes, reason: bad.problem, ...(bad.path !== undefined ? { path: bad.path } : {}) }
}
