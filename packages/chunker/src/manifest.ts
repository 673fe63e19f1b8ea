import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR, MAX_BLOCK_SIZE, RAW, SHA2_256 } from './cid.ts'
import { MAX_CHUNK, MIN_CHUNK } from './fastcdc.ts'
import { EntryListWriter, readDagCbor, TYPE_CODES } from './cbor.ts'
import { comparePaths } from './entry.ts'
import type { Entry, EntryType, RootAttributes, Chunk } from './entry.ts'
import { InvalidManifestError, UnsupportedEntryError } from './errors.ts'
import { OVERLAY_XATTR } from './xattrs.ts'

/**
 * The layer manifest format, version 2 (doc/FORMAT.md describes it in full).
 * Root block: { format: 'strata/layer', version: 2, count, size, root, entries: [CID], times: [CID] }.
 * Entry-list block: { entries: [entry...] }, entries in comparePaths order across blocks,
 * without their mtimes; times block i: { mt: [Δseconds, nanoseconds, ...] } for entry list i.
 * Version 1 (mtimes inside the entries, no times blocks) is still read.
 */
export const FORMAT = 'strata/layer'
export const VERSION = 2
/** The versions this reader accepts. */
export const READ_VERSIONS: readonly number[] = [1, 2]

/** Limits a manifest must keep; a decoder refuses anything past them. */
export const LIMITS = {
  entries: 10_000_000,
  entryBlocks: 20_000,
  pathBytes: 4096,
  nameBytes: 255,
  depth: 512,
  symlinkBytes: 4095,
  xattrs: 64,
  xattrNameBytes: 255,
  xattrValueBytes: 64 * 1024,
  fileSize: 2 ** 48,
  inlineBytes: 64 * 1024,
  /** All manifest blocks of one layer together. */
  manifestBytes: 256 * 1024 * 1024
} as const

export { OVERLAY_XATTR }

const ROOT_KEYS = new Set(['format', 'version', 'count', 'size', 'root', 'entries', 'times'])
const ROOT_ATTR_KEYS = new Set(['m', 'u', 'g', 'mt', 'x', 'o'])


// Entry-list blocks end where a path's hash says so (once past a minimum), so that
// two layers sharing a run of entries share the blocks holding them; a block is
// also closed before it could pass the block size limit.
const BLOCK_TARGET_MIN = 16 * 1024
const BLOCK_SOFT_MAX = 768 * 1024
const BOUNDARY_MASK = 0x3ff

function pathHash (path: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < path.length; i++) h = Math.imul(h ^ path.charCodeAt(i), 0x01000193)
  return h >>> 0
}

export interface ManifestBlock {
  cid: CID
  bytes: Uint8Array
}

export interface EncodedManifest {
  root: CID
  /** Every block of the manifest, the root first; the root alone when the entry lists went to an `onBlock`. */
  blocks: ManifestBlock[]
  count: number
  size: number
}

function encodeAttrs (o: Record<string, unknown>, a: { mode: number, uid: number, gid: number, mtime: [number, number], xattrs?: Array<[string, Uint8Array]> | undefined, opaque?: boolean | undefined }): void {
  o.m = a.mode
  o.u = a.uid
  o.g = a.gid
  o.mt = a.mtime
  if (a.xattrs !== undefined && a.xattrs.length > 0) o.x = a.xattrs
  if (a.opaque === true) o.o = true
}

function estimateSize (e: Entry): number {
  let n = 64 + e.path.length * 3 + (e.target?.length ?? 0) * 3 + (e.data?.length ?? 0) + (e.chunks?.length ?? 0) * 48
  for (const [k, v] of e.xattrs ?? []) n += k.length + v.length + 8
  return n
}

/**
 * Builds a manifest from entries given in order. With `onBlock`, each entry-list
 * block is handed over as soon as it is complete instead of kept until finish():
 * a large layer's manifest (tens of MB with its inline files) then never sits
 * in memory whole.
 */
export class ManifestBuilder {
  readonly #lists: ManifestBlock[] = []
  readonly #listCids: CID[] = []
  readonly #onBlock: ((block: ManifestBlock) => void) | undefined
  // The same checks a reader makes, so that what a writer builds always reads back.
  readonly #checker = new EntryChecker(LIMITS.entries)
  readonly #timeCids: CID[] = []
  readonly #current = new EntryListWriter({ mtime: false })
  // The current list's mtimes, seconds as the difference from the entry before.
  #times: number[] = []
  #lastSeconds = 0
  #currentSize = 0
  #last: string | undefined
  #count = 0
  #size = 0

  constructor (opts: { onBlock?: (block: ManifestBlock) => void } = {}) {
    this.#onBlock = opts.onBlock
  }

  add (entry: Entry): void {
    this.#checker.check(entry)
    const est = estimateSize(entry)
    // One entry must fit one block: ~22k chunk references, a file of 1.4 GiB or so.
    if (est > MAX_BLOCK_SIZE - 64 * 1024) throw new UnsupportedEntryError(`entry too large for a manifest block (${entry.chunks?.length ?? 0} chunks); the format carries files up to about 1.4 GiB`, { path: entry.path })
    if (this.#currentSize + est > BLOCK_SOFT_MAX && this.#current.count > 0) this.#flush()
    this.#current.add(entry)
    this.#times.push(entry.mtime[0] - this.#lastSeconds, entry.mtime[1])
    this.#lastSeconds = entry.mtime[0]
    this.#currentSize += est
    this.#last = entry.path
    this.#count++
    if (entry.type === 'file') this.#size += entry.size
    if (this.#currentSize >= BLOCK_TARGET_MIN && (pathHash(entry.path) & BOUNDARY_MASK) === 0) this.#flush()
  }

  #flush (): void {
    if (this.#current.count === 0) return
    const bytes = this.#current.finish()
    if (bytes.length > MAX_BLOCK_SIZE) throw new InvalidManifestError(`an entry-list block would be ${bytes.length} bytes`, { path: this.#last })
    const block = { cid: cidOf(DAG_CBOR, bytes), bytes }
    const timesBytes = dagCbor.encode({ mt: this.#times })
    const times = { cid: cidOf(DAG_CBOR, timesBytes), bytes: timesBytes }
    this.#times = []
    this.#lastSeconds = 0
    this.#listCids.push(block.cid)
    this.#timeCids.push(times.cid)
    for (const b of [block, times]) {
      if (this.#onBlock !== undefined) this.#onBlock(b)
      else this.#lists.push(b)
    }
    this.#currentSize = 0
  }

  finish (root: RootAttributes): EncodedManifest {
    this.#flush()
    if (this.#listCids.length > LIMITS.entryBlocks) throw new InvalidManifestError(`too many entries (${this.#count})`)
    const rootAttrs: Record<string, unknown> = {}
    encodeAttrs(rootAttrs, root)
    const bytes = dagCbor.encode({
      format: FORMAT,
      version: VERSION,
      count: this.#count,
      size: this.#size,
      root: rootAttrs,
      entries: this.#listCids,
      times: this.#timeCids
    })
    const rootBlock = { cid: cidOf(DAG_CBOR, bytes), bytes }
    return { root: rootBlock.cid, blocks: [rootBlock, ...this.#lists], count: this.#count, size: this.#size }
  }
}

export interface ManifestRoot {
  version: number
  count: number
  size: number
  root: RootAttributes
  entries: CID[]
  /** Format 2: the times block of each entry list; empty in format 1. */
  times: CID[]
}

/** Every block a root links to, in the order a manifest's blocks are kept: each entry list, then its times block. */
export function manifestLinks (root: ManifestRoot): CID[] {
  if (root.times.length === 0) return [...root.entries]
  return root.entries.flatMap((cid, i) => [cid, root.times[i]!])
}

function fail (message: string, path?: string): never {
  throw new InvalidManifestError(message, path !== undefined ? { path } : undefined)
}

function isMap (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && CID.asCID(v) === null
}

function uint (v: unknown, max: number, what: string, path?: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) fail(`${what} must be an integer in 0..${max}`, path)
  return v
}

function utf8Length (s: string): number {
  return Buffer.byteLength(s, 'utf8')
}

/** Throws InvalidManifestError unless `path` is a safe relative path. */
export function checkPath (path: unknown, what = 'path'): string {
  if (typeof path !== 'string') fail(`${what} must be a string`)
  if (path.length === 0) fail(`${what} is empty`)
  if (utf8Length(path) > LIMITS.pathBytes) fail(`${what} is longer than ${LIMITS.pathBytes} bytes`, path.slice(0, 200))
  if (path.includes('\0')) fail(`${what} contains a NUL byte`, path)
  if (path.startsWith('/')) fail(`${what} is absolute`, path)
  const parts = path.split('/')
  if (parts.length > LIMITS.depth) fail(`${what} is deeper than ${LIMITS.depth} components`, path.slice(0, 200))
  for (const part of parts) {
    if (part === '') fail(`${what} has an empty component`, path)
    if (part === '.' || part === '..') fail(`${what} has a '${part}' component`, path)
    if (part.length * 3 > LIMITS.nameBytes && utf8Length(part) > LIMITS.nameBytes) fail(`${what} has a component longer than ${LIMITS.nameBytes} bytes`, path)
  }
  return path
}

function decodeMtime (v: unknown, path?: string): [number, number] {
  if (!Array.isArray(v) || v.length !== 2) fail('mtime must be [seconds, nanoseconds]', path)
  const sec = v[0] as unknown
  if (typeof sec !== 'number' || !Number.isSafeInteger(sec)) fail('mtime seconds must be an integer', path)
  return [sec, uint(v[1], 999_999_999, 'mtime nanoseconds', path)]
}

function decodeXattrs (v: unknown, path?: string): Array<[string, Uint8Array]> | undefined {
  if (v === undefined) return undefined
  if (!Array.isArray(v) || v.length > LIMITS.xattrs) fail(`xattrs must be a list of at most ${LIMITS.xattrs} pairs`, path)
  const out: Array<[string, Uint8Array]> = []
  let prev: string | undefined
  for (const pair of v as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2) fail('an xattr must be [name, value]', path)
    const [name, value] = pair as [unknown, unknown]
    if (typeof name !== 'string' || name.length === 0 || utf8Length(name) > LIMITS.xattrNameBytes || name.includes('\0')) fail('bad xattr name', path)
    if (!(value instanceof Uint8Array) || value.length > LIMITS.xattrValueBytes) fail(`xattr ${name} value must be bytes of at most ${LIMITS.xattrValueBytes}`, path)
    if (prev !== undefined && !(prev < name)) fail('xattrs out of order or duplicated', path)
    if (OVERLAY_XATTR.test(name)) fail(`xattr ${name} belongs to the overlay filesystem and is never stored`, path)
    prev = name
    out.push([name, value])
  }
  return out
}

export function decodeRoot (bytes: Uint8Array): ManifestRoot {
  let v: unknown
  try {
    v = readDagCbor(bytes)
  } catch (err) {
    throw new InvalidManifestError(`the manifest root is not valid dag-cbor (${(err as Error).message})`, { cause: err })
  }
  if (!isMap(v)) fail('the manifest root must be a map')
  if (v.format !== FORMAT) fail(`not a strata layer manifest (format ${JSON.stringify(v.format)})`)
  if (typeof v.version !== 'number' || !READ_VERSIONS.includes(v.version)) fail(`unsupported manifest version ${JSON.stringify(v.version)} (this strata reads ${READ_VERSIONS.join(' and ')})`)
  const version = v.version
  for (const k of Object.keys(v)) if (!ROOT_KEYS.has(k)) fail(`unexpected field ${JSON.stringify(k)} in the manifest root`)
  const count = uint(v.count, LIMITS.entries, 'count')
  const size = uint(v.size, Number.MAX_SAFE_INTEGER, 'size')
  if (!isMap(v.root)) fail('root attributes must be a map')
  const r = v.root
  for (const k of Object.keys(r)) if (!ROOT_ATTR_KEYS.has(k)) fail(`unexpected field ${JSON.stringify(k)} in the root attributes`)
  const root: RootAttributes = {
    mode: uint(r.m, 0o7777, 'root mode'),
    uid: uint(r.u, 0xffffffff, 'root uid'),
    gid: uint(r.g, 0xffffffff, 'root gid'),
    mtime: decodeMtime(r.mt)
  }
  const xattrs = decodeXattrs(r.x)
  if (xattrs !== undefined) root.xattrs = xattrs
  if (r.o === true) root.opaque = true
  if (!Array.isArray(v.entries) || v.entries.length > LIMITS.entryBlocks) fail(`entries must be a list of at most ${LIMITS.entryBlocks} block links`)
  const links = (list: unknown[], what: string): CID[] => list.map((e) => {
    const cid = CID.asCID(e)
    if (cid === null || cid.version !== 1 || cid.code !== DAG_CBOR || cid.multihash.code !== SHA2_256) fail(`${what} links must be dag-cbor sha2-256 CIDv1`)
    return cid
  })
  const entries = links(v.entries as unknown[], 'entry-list')
  let times: CID[] = []
  if (version === 1) {
    if (v.times !== undefined) fail('a version 1 manifest has no times blocks')
  } else {
    if (!Array.isArray(v.times) || v.times.length !== entries.length) fail('times must list one block per entry-list block')
    times = links(v.times as unknown[], 'times')
  }
  if (count > 0 && entries.length === 0) fail('count is positive but there are no entry blocks')
  return { version, count, size, root, entries, times }
}

/** Decodes a times block of `count` entries (format 2) into their mtimes. */
export function decodeTimes (bytes: Uint8Array, count: number): Array<[number, number]> {
  let v: unknown
  try {
    v = readDagCbor(bytes)
  } catch (err) {
    throw new InvalidManifestError(`a times block is not valid dag-cbor (${(err as Error).message})`, { cause: err })
  }
  if (!isMap(v) || !Array.isArray(v.mt)) fail('a times block must be { mt: [...] }')
  for (const k of Object.keys(v)) if (k !== 'mt') fail(`unexpected field ${JSON.stringify(k)} in a times block`)
  const mt = v.mt as unknown[]
  if (mt.length !== 2 * count) fail(`a times block holds ${mt.length / 2} times for ${count} entries`)
  const out: Array<[number, number]> = new Array(count)
  let seconds = 0
  for (let i = 0; i < count; i++) {
    const delta = mt[2 * i]
    if (typeof delta !== 'number' || !Number.isSafeInteger(delta) || !Number.isSafeInteger(seconds + delta)) fail('mtime seconds must be integers')
    seconds += delta
    out[i] = [seconds, uint(mt[2 * i + 1], 999_999_999, 'mtime nanoseconds')]
  }
  return out
}

function decodeEntry (v: unknown, version: number): Entry {
  if (!isMap(v)) fail('an entry must be a map')
  const path = checkPath(v.p)
  const typeCode = uint(v.t, TYPE_CODES.length - 1, 'type', path)
  const type = TYPE_CODES[typeCode]!
  if (version !== 1 && v.mt !== undefined) fail('a version 2 entry carries its mtime in the times block', path)
  const e: Entry = {
    path,
    type,
    mode: uint(v.m, 0o7777, 'mode', path),
    uid: uint(v.u, 0xffffffff, 'uid', path),
    gid: uint(v.g, 0xffffffff, 'gid', path),
    mtime: version === 1 ? decodeMtime(v.mt, path) : [0, 0],
    size: 0
  }
  const xattrs = decodeXattrs(v.x, path)
  if (xattrs !== undefined) e.xattrs = xattrs
  switch (type) {
    case 'dir':
      if (v.o !== undefined) {
        if (v.o !== true) fail('opaque must be true when present', path)
        e.opaque = true
      }
      break
    case 'file': {
      e.size = uint(v.s, LIMITS.fileSize, 'size', path)
      if (v.d !== undefined) {
        if (!(v.d instanceof Uint8Array) || v.d.length > LIMITS.inlineBytes) fail(`inline data must be bytes of at most ${LIMITS.inlineBytes}`, path)
        if (v.d.length !== e.size) fail('inline data length differs from size', path)
        if (e.size === 0) fail('an empty file carries no inline data', path)
        e.data = v.d
      }
      if (v.c !== undefined) {
        if (e.data !== undefined) fail('a file has both inline data and chunks', path)
        // FastCDC never cuts below MIN_CHUNK except at the end: that bounds the count.
        if (!Array.isArray(v.c) || v.c.length === 0 || v.c.length > Math.floor(e.size / MIN_CHUNK) + 1) fail('chunks must be a non-empty list of at most size / 16 KiB + 1', path)
        let total = 0
        const chunks: Chunk[] = []
        for (const c of v.c as unknown[]) {
          if (!Array.isArray(c) || c.length !== 2) fail('a chunk must be [cid, length]', path)
          const cid = CID.asCID(c[0])
          if (cid === null || cid.version !== 1 || cid.code !== RAW || cid.multihash.code !== SHA2_256 || cid.multihash.size !== 32) fail('a chunk CID must be raw sha2-256 CIDv1', path)
          const length = uint(c[1], MAX_BLOCK_SIZE, 'chunk length', path)
          if (length === 0 || length > MAX_CHUNK) fail(`a chunk length must be 1..${MAX_CHUNK}`, path)
          if (length < MIN_CHUNK && chunks.length < (v.c as unknown[]).length - 1) fail(`only the last chunk may be shorter than ${MIN_CHUNK}`, path)
          total += length
          chunks.push({ cid, length })
        }
        if (total !== e.size) fail(`chunk lengths add up to ${total}, not the file size ${e.size}`, path)
        e.chunks = chunks
      }
      if (e.size > 0 && e.data === undefined && e.chunks === undefined) fail('a non-empty file has no content', path)
      break
    }
    case 'symlink': {
      const t = v.l
      if (typeof t !== 'string' || t.length === 0 || utf8Length(t) > LIMITS.symlinkBytes || t.includes('\0')) fail(`a symlink target must be 1..${LIMITS.symlinkBytes} bytes without NUL`, path)
      e.target = t
      break
    }
    case 'hardlink':
      e.target = checkPath(v.l, 'hardlink target')
      break
    case 'chardev':
    case 'blockdev': {
      if (!Array.isArray(v.r) || v.r.length !== 2) fail('a device needs [major, minor]', path)
      e.rdev = [uint(v.r[0], 0xfff, 'major', path), uint(v.r[1], 0xfffff, 'minor', path)]
      break
    }
    case 'whiteout':
    case 'fifo':
      break
  }
  const allowed = FIELDS[typeCode]!
  for (const k in v) if (!allowed.has(k)) fail(`unexpected field ${JSON.stringify(k)} for a ${type}`, path)
  return e
}

/** The fields an entry of each type may have, by type code. */
const FIELDS: ReadonlyArray<ReadonlySet<string>> = TYPE_CODES.map((t) => {
  const common = ['p', 't', 'm', 'u', 'g', 'mt', 'x']
  const more: Record<EntryType, string[]> = { file: ['s', 'd', 'c'], dir: ['o'], symlink: ['l'], hardlink: ['l'], chardev: ['r'], blockdev: ['r'], whiteout: [], fifo: [] }
  return new Set([...common, ...more[t]])
})

/**
 * Decodes one entry-list block of a manifest of `version` (default 1); in version 2 with its
 * times block, whose mtimes it gives the entries. A version 2 list read without its times
 * (by a reader of paths and content only) gives every entry an mtime of [0, 0].
 * Order across blocks is checked by EntryChecker.
 */
export function decodeEntryList (bytes: Uint8Array, opts: { version?: number, times?: Uint8Array } = {}): Entry[] {
  const version = opts.version ?? 1
  let v: unknown
  try {
    v = readDagCbor(bytes)
  } catch (err) {
    throw new InvalidManifestError(`an entry-list block is not valid dag-cbor (${(err as Error).message})`, { cause: err })
  }
  if (!isMap(v) || !Array.isArray(v.entries)) fail('an entry-list block must be { entries: [...] }')
  // One encoding per list: padding would give the same layer another CID, and cost the reader bytes for nothing.
  for (const k of Object.keys(v)) if (k !== 'entries') fail(`unexpected field ${JSON.stringify(k)} in an entry-list block`)
  const entries = (v.entries as unknown[]).map((e) => decodeEntry(e, version))
  if (opts.times !== undefined) {
    if (version === 1) fail('a version 1 manifest has no times blocks')
    const times = decodeTimes(opts.times, entries.length)
    for (let i = 0; i < entries.length; i++) entries[i]!.mtime = times[i]!
  }
  return entries
}

/**
 * Walks the entries of a manifest, checking what no single entry can show:
 * strict order (so no duplicates), the entry count, and that every parent is a
 * directory of the layer and every hardlink points at an earlier regular file.
 */
export class EntryChecker {
  // Entries come in comparePaths order, where a directory's descendants follow it
  // at once: the directories that can still be a parent are the last entry's
  // ancestors, a stack, and the regular files so far are a sorted list.
  readonly #open: string[] = ['']
  readonly #files: string[] = []
  #last: string | undefined
  #count = 0
  #size = 0
  readonly #expected: number
  readonly #expectedSize: number | undefined

  constructor (expected: number, expectedSize?: number) {
    this.#expected = expected
    this.#expectedSize = expectedSize
  }

  check (e: Entry): void {
    const path = e.path
    if (this.#last !== undefined && comparePaths(this.#last, path) >= 0) {
      fail(comparePaths(this.#last, path) === 0 ? 'duplicate path' : 'entries out of order', path)
    }
    this.#last = path
    if (++this.#count > this.#expected) fail(`more entries than the ${this.#expected} the root declares`, path)
    const open = this.#open
    let top = open[open.length - 1]!
    while (top !== '' && !(path.length > top.length && path.charCodeAt(top.length) === 0x2f && path.startsWith(top))) {
      open.pop()
      top = open[open.length - 1]!
    }
    if (path.lastIndexOf('/') !== (top === '' ? -1 : top.length)) fail('the parent is not a directory of this layer', path)
    if (e.type === 'dir') open.push(path)
    if (e.type === 'file') {
      this.#files.push(path)
      this.#size += e.size
      if (this.#expectedSize !== undefined && this.#size > this.#expectedSize) fail(`files add up to more than the ${this.#expectedSize} bytes the root declares`, path)
    }
    if (e.type === 'hardlink' && !this.#isFile(e.target!)) fail('a hardlink must point at an earlier regular file of the layer', path)
  }

  #isFile (path: string): boolean {
    const files = this.#files
    let lo = 0
    let hi = files.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const c = comparePaths(files[mid]!, path)
      if (c === 0) return true
      if (c < 0) lo = mid + 1
      else hi = mid - 1
    }
    return false
  }

  end (): void {
    if (this.#count !== this.#expected) fail(`the root declares ${this.#expected} entries, found ${this.#count}`)
    if (this.#expectedSize !== undefined && this.#size !== this.#expectedSize) fail(`the root declares ${this.#expectedSize} bytes of files, found ${this.#size}`)
  }
}

/** Yields a manifest's entries, checked, fetching entry-list blocks through `getBlock`. */
export async function * readManifest (root: CID, getBlock: (cid: CID) => Promise<Uint8Array>): AsyncGenerator<Entry, void, undefined> {
  const decoded = decodeRoot(await getBlock(root))
  const checker = new EntryChecker(decoded.count, decoded.size)
  for (const [i, cid] of decoded.entries.entries()) {
    const times = decoded.version === 1 ? undefined : await getBlock(decoded.times[i]!)
    const list = decodeEntryList(await getBlock(cid), { version: decoded.version, ...(times !== undefined ? { times } : {}) })
    if (list.length === 0) fail('an entry-list block is empty')
    for (const e of list) {
      checker.check(e)
      yield e
    }
  }
  checker.end()
}
