import { createHash, createHmac, createSecretKey } from 'node:crypto'
import type { Hmac, KeyObject } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import type { BaseIdentity } from './base.ts'
import type { InputEntry } from './inputs.ts'

/**
 * Version of the key descriptor layout; bumping it changes every key. 2: digests
 * keyed by the salts, the salt itself hashed. 3: the workspace, by paths relative to it.
 * 4: what lies below by its identity (the layers' root CIDs and the merged env), not
 * by the parents' keys.
 */
export const KEY_FORMAT = 4

/**
 * The filesystem a step is mounted on, by identity: the base, the root CIDs of the
 * layers stacked on it (bottom first) and the keyed digest of the $STRATA_ENV lines
 * they add up to (null when none). Two runs that stack the same layers get the same
 * value whatever keys produced them: a parent that re-ran and wrote the same files
 * leaves its children's keys as they were (early cutoff).
 */
export interface Below {
  base: BaseIdentity
  layers: CID[]
  env: Uint8Array | null
}

/**
 * Everything a step's result may depend on. Its dag-cbor encoding hashed with
 * sha2-256 is the step's cache key (a CIDv1, codec dag-cbor).
 */
export interface KeyDescriptor {
  v: number
  below: Below
  run: string
  cwd: string
  /** uid:gid the command runs as. */
  user: string
  /** Declared env, sorted by name: [name, envValueDigest(value)] or [name, null] when unset. */
  env: Array<[string, Uint8Array | null]>
  /** Declared inputs as the step sees them, sorted by path; file digests are inputDigest()s. */
  inputs: InputEntry[]
  /**
   * The checkout as the step sees it (after its filter): where it is mounted and the
   * sha2-256 of its listing (each entry by its path relative to the workspace, its
   * type, execute bit and content digest or link text; see workspace.ts), never the
   * host path. Null for a step without a workspace (exec).
   */
  workspace: { path: string, digest: Uint8Array, files: number } | null
  platform: { os: string, arch: string }
  /** saltId() of the salts, null when neither the pipeline nor the fleet has one. */
  salt: Uint8Array | null
  /** Only for `cache: false` steps: the layer the run produced (their key is known after the run). */
  output?: CID
  /** Only for `reproducible` steps: the SOURCE_DATE_EPOCH the step ran with and its mtimes were clamped to. */
  epoch?: number
}

export interface EncodedKey {
  key: CID
  bytes: Uint8Array
}

export async function encodeDescriptor (d: KeyDescriptor): Promise<EncodedKey> {
  const bytes = dagCbor.encode(d)
  const digest = await sha256.digest(bytes)
  return { key: CID.createV1(dagCbor.code, digest), bytes }
}

/** Decodes descriptor bytes, checking they hash to `key`. */
export async function decodeDescriptor (key: CID, bytes: Uint8Array): Promise<KeyDescriptor | undefined> {
  const digest = await sha256.digest(bytes)
  if (!CID.createV1(dagCbor.code, digest).equals(key)) return undefined
  return dagCbor.decode<KeyDescriptor>(bytes)
}

/**
 * The key that env values and input contents are digested under. Descriptors are
 * stored and shared: a plain digest there lets any reader confirm a guessed file or
 * value. Keyed by the salts, a reader who lacks them (the fleet's salt is a secret
 * every VM of the fleet gets) cannot; without salts the key is a public constant,
 * which only keeps the digests apart from other uses of sha2-256.
 */
export interface DigestKey {
  /** HMAC-SHA256 key derived from the salts. */
  readonly key: Uint8Array
  /** What the descriptor records of the salts: a digest of the key, or null when there are none. */
  readonly id: Uint8Array | null
}

const lengthPrefixed = (s: string): Buffer => {
  const b = Buffer.from(s, 'utf8')
  const n = Buffer.alloc(4)
  n.writeUInt32BE(b.length)
  return Buffer.concat([n, b])
}

/** The digest key for a pipeline salt (public: it is in strata.yml) and a fleet salt (secret, from outside the checkout). */
export function digestKey (salt: string | null, fleetSalt: string | null = null): DigestKey {
  const h = createHash('sha256').update('strata/digest-key/v2\0')
  // Length-prefixed, each marked present or absent: ("ab", "c") and ("a", "bc") are different keys.
  for (const s of [salt, fleetSalt]) h.update(s === null ? Buffer.from([0]) : Buffer.concat([Buffer.from([1]), lengthPrefixed(s)]))
  const key = new Uint8Array(h.digest())
  const id = salt === null && fleetSalt === null ? null : new Uint8Array(createHash('sha256').update('strata/salt-id/v2\0').update(key).digest())
  return { key, id }
}

/** No salts: the public constant key. */
export const UNSALTED: DigestKey = digestKey(null, null)

/** The merged $STRATA_ENV lines below a step, as one keyed digest; null when there are none. */
export function envLinesDigest (lines: readonly string[], key: DigestKey = UNSALTED): Uint8Array | null {
  if (lines.length === 0) return null
  const h = createHmac('sha256', key.key).update('strata/env-lines/v1\0')
  for (const line of lines) h.update(lengthPrefixed(line))
  return new Uint8Array(h.digest())
}

/** Env values enter the key as this keyed digest, never in clear. */
export function envValueDigest (value: string, key: DigestKey = UNSALTED): Uint8Array {
  return new Uint8Array(createHmac('sha256', key.key).update('strata/env-value/v2\0').update(value).digest())
}

/** A streaming digest of an input file's content; feed the bytes, then digest(). */
export function inputDigest (key: DigestKey = UNSALTED): Hmac {
  return createHmac('sha256', keyObject(key)).update('strata/input/v2\0')
}

/** One KeyObject per digest key: making it from bytes again for each of many small files costs more than hashing them. */
const keyObjects = new WeakMap<DigestKey, KeyObject>()
function keyObject (key: DigestKey): KeyObject {
  let k = keyObjects.get(key)
  if (k === undefined) {
    k = createSecretKey(key.key)
    keyObjects.set(key, k)
  }
  return k
}

/** One difference between two descriptors, in terms a user understands. */
export type KeyChange =
  | { field: 'format', before: number, after: number }
  /** The layers below, bottom first: `step` names, when why() knows it, the step whose layer differs. */
  | { field: 'layers', before: string[], after: string[] }
  | { field: 'below-env', before: string | null, after: string | null }
  | { field: 'base', detail: 'os-release' | 'arch' | 'base-id' | 'kind' | 'tree', before: string, after: string }
  | { field: 'run', before: string, after: string }
  | { field: 'cwd', before: string, after: string }
  | { field: 'user', before: string, after: string }
  | { field: 'env', name: string, change: 'added' | 'removed' | 'value' | 'set' | 'unset' }
  | { field: 'input', path: string, change: 'added' | 'removed' | 'content' | 'type' | 'mode' | 'target' }
  /** `path`: the workspace path moved; `files`: its content changed (why() adds one `workspace-file` per path when it has both listings). */
  | { field: 'workspace', change: 'path' | 'files' | 'added' | 'removed', before: string | null, after: string | null }
  | { field: 'workspace-file', path: string, change: 'added' | 'removed' | 'content' | 'type' | 'mode' | 'target' }
  /** More workspace files changed than why() lists. */
  | { field: 'workspace-more', count: number }
  | { field: 'platform', before: string, after: string }
  | { field: 'salt', before: string | null, after: string | null }
  | { field: 'output', before: string | null, after: string | null }
  | { field: 'reproducible', before: number | null, after: number | null }

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex').slice(0, 16)
const eqBytes = (a: Uint8Array | null | undefined, b: Uint8Array | null | undefined): boolean =>
  a === b || (a != null && b != null && Buffer.from(a).equals(Buffer.from(b)))

/** What changed from `before` to `after`, field by field; empty when they are the same key. */
export function diffDescriptors (before: KeyDescriptor, after: KeyDescriptor): KeyChange[] {
  const out: KeyChange[] = []
  // Other formats digest and record fields otherwise: comparing them field by field would only mislead.
  if (before.v !== after.v) return [{ field: 'format', before: before.v, after: after.v }]
  const b = before.below.base
  const a = after.below.base
  if (b.kind !== a.kind) out.push({ field: 'base', detail: 'kind', before: b.kind, after: a.kind })
  else if (b.kind === 'host' && a.kind === 'host') {
    if (!eqBytes(b.osRelease, a.osRelease)) out.push({ field: 'base', detail: 'os-release', before: hex(b.osRelease), after: hex(a.osRelease) })
    if (b.arch !== a.arch) out.push({ field: 'base', detail: 'arch', before: b.arch, after: a.arch })
  } else if (b.kind === 'dir' && a.kind === 'dir') {
    if (!eqBytes(b.digest, a.digest)) out.push({ field: 'base', detail: 'tree', before: hex(b.digest), after: hex(a.digest) })
  }
  if (b.id !== a.id) out.push({ field: 'base', detail: 'base-id', before: String(b.id), after: String(a.id) })
  const lb = before.below.layers.map(String)
  const la = after.below.layers.map(String)
  if (lb.length !== la.length || lb.some((x, i) => x !== la[i])) out.push({ field: 'layers', before: lb, after: la })
  if (!eqBytes(before.below.env, after.below.env)) {
    out.push({ field: 'below-env', before: before.below.env === null ? null : hex(before.below.env), after: after.below.env === null ? null : hex(after.below.env) })
  }
  if (before.run !== after.run) out.push({ field: 'run', before: before.run, after: after.run })
  if (before.cwd !== after.cwd) out.push({ field: 'cwd', before: before.cwd, after: after.cwd })
  if (before.user !== after.user) out.push({ field: 'user', before: before.user, after: after.user })

  const envB = new Map(before.env)
  const envA = new Map(after.env)
  for (const [name, vb] of envB) {
    if (!envA.has(name)) out.push({ field: 'env', name, change: 'removed' })
    else {
      const va = envA.get(name) ?? null
      if (vb === null && va !== null) out.push({ field: 'env', name, change: 'set' })
      else if (vb !== null && va === null) out.push({ field: 'env', name, change: 'unset' })
      else if (!eqBytes(vb, va)) out.push({ field: 'env', name, change: 'value' })
    }
  }
  for (const name of envA.keys()) if (!envB.has(name)) out.push({ field: 'env', name, change: 'added' })

  const inB = new Map(before.inputs.map((e) => [e.path, e]))
  const inA = new Map(after.inputs.map((e) => [e.path, e]))
  for (const [path, b] of inB) {
    const a = inA.get(path)
    if (a === undefined) out.push({ field: 'input', path, change: 'removed' })
    else if (a.type !== b.type) out.push({ field: 'input', path, change: 'type' })
    else if (!eqBytes(a.digest, b.digest)) out.push({ field: 'input', path, change: 'content' })
    else if (a.exec !== b.exec) out.push({ field: 'input', path, change: 'mode' })
    else if (a.target !== b.target) out.push({ field: 'input', path, change: 'target' })
  }
  for (const path of inA.keys()) if (!inB.has(path)) out.push({ field: 'input', path, change: 'added' })

  const wb = before.workspace ?? null
  const wa = after.workspace ?? null
  if (wb === null && wa !== null) out.push({ field: 'workspace', change: 'added', before: null, after: wa.path })
  else if (wb !== null && wa === null) out.push({ field: 'workspace', change: 'removed', before: wb.path, after: null })
  else if (wb !== null && wa !== null) {
    if (wb.path !== wa.path) out.push({ field: 'workspace', change: 'path', before: wb.path, after: wa.path })
    if (!eqBytes(wb.digest, wa.digest)) out.push({ field: 'workspace', change: 'files', before: hex(wb.digest), after: hex(wa.digest) })
  }

  const plB = `${before.platform.os}/${before.platform.arch}`
  const plA = `${after.platform.os}/${after.platform.arch}`
  if (plB !== plA) out.push({ field: 'platform', before: plB, after: plA })
  if (!eqBytes(before.salt, after.salt)) out.push({ field: 'salt', before: before.salt === null ? null : hex(before.salt), after: after.salt === null ? null : hex(after.salt) })
  const ob = before.output?.toString() ?? null
  const oa = after.output?.toString() ?? null
  if (ob !== oa) out.push({ field: 'output', before: ob, after: oa })
  if ((before.epoch ?? null) !== (after.epoch ?? null)) out.push({ field: 'reproducible', before: before.epoch ?? null, after: after.epoch ?? null })
  return out
}

/** One line per change, for a CLI to print. */
export function describeChange (c: KeyChange): string {
  switch (c.field) {
    case 'format': return `the key format changed (v${c.before} -> v${c.after})`
    case 'layers': return layersChange(c.before, c.after)
    case 'below-env': return 'the $STRATA_ENV lines of the steps below changed'
    case 'base': return c.detail === 'base-id'
      ? `base-id changed (${c.before} -> ${c.after})`
      : c.detail === 'kind' ? `the base changed (${c.before} -> ${c.after})` : `the base's ${c.detail} changed (${c.before} -> ${c.after})`
    case 'run': return 'the command changed'
    case 'cwd': return `cwd changed (${c.before} -> ${c.after})`
    case 'user': return `the user changed (${c.before} -> ${c.after})`
    case 'env': return c.change === 'added' ? `env ${c.name} was added`
      : c.change === 'removed' ? `env ${c.name} was removed`
        : c.change === 'set' ? `env ${c.name} is now set`
          : c.change === 'unset' ? `env ${c.name} is now unset` : `env ${c.name} has another value`
    case 'input': return c.change === 'added' ? `input ${c.path} is new`
      : c.change === 'removed' ? `input ${c.path} is gone`
        : c.change === 'content' ? `input ${c.path} changed content`
          : c.change === 'type' ? `input ${c.path} changed type` : c.change === 'mode' ? `input ${c.path} changed its execute bit` : `symlink ${c.path} points elsewhere`
    case 'workspace': return c.change === 'added' ? `the step now has a workspace at ${c.after}`
      : c.change === 'removed' ? 'the step no longer has a workspace'
        : c.change === 'path' ? `the workspace path changed (${c.before} -> ${c.after})` : 'workspace files changed'
    case 'workspace-file': return c.change === 'added' ? `workspace file ${c.path} is new`
      : c.change === 'removed' ? `workspace file ${c.path} is gone`
        : c.change === 'content' ? `workspace file ${c.path} changed content`
          : c.change === 'type' ? `workspace file ${c.path} changed type` : c.change === 'mode' ? `workspace file ${c.path} changed its execute bit` : `workspace symlink ${c.path} points elsewhere`
    case 'workspace-more': return `and ${c.count} more workspace files changed`
    case 'platform': return `the platform changed (${c.before} -> ${c.after})`
    case 'salt': return `the salt changed (${c.before ?? 'none'} -> ${c.after ?? 'none'})`
    case 'output': return 'the uncached step produced another layer'
    case 'reproducible': return c.after === null ? 'the step is no longer reproducible' : c.before === null ? 'the step is now reproducible' : `SOURCE_DATE_EPOCH changed (${c.before} -> ${c.after})`
  }
}

/** What changed in the stack below, in layers: added, gone, or the same layers in another order. */
function layersChange (before: readonly string[], after: readonly string[]): string {
  const b = new Set(before)
  const a = new Set(after)
  const added = after.filter((x) => !b.has(x)).length
  const gone = before.filter((x) => !a.has(x)).length
  if (added === 0 && gone === 0) return 'the layers below are stacked in another order'
  const parts = [added > 0 ? `${added} new` : '', gone > 0 ? `${gone} gone` : ''].filter((x) => x !== '')
  return `the layers below changed (${parts.join(', ')})`
}
