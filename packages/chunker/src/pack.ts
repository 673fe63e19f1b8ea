import { hash } from 'node:crypto'
import { lstatSync, readdirSync } from 'node:fs'
import type { Dirent } from 'node:fs'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { X } from '@strata/sys'
import { cidString, RAW, SHA2_256 } from './cid.ts'
import { CHUNK_COUNT, CHUNK_START, DATA_LENGTH, DATA_START, FsPool, STAT_FIELDS } from './fs-pool.ts'
import type { EntriesReply, EntryExtra, WorkerResponse } from './fs-pool.ts'
import { compareNames } from './entry.ts'
import type { Chunk, Entry, RootAttributes } from './entry.ts'
import { ManifestBuilder, LIMITS } from './manifest.ts'
import { defaultOpaqueNamespace, readXattrs } from './xattrs.ts'
import type { OpaqueNamespace } from './xattrs.ts'
import { applyFixes } from './normalize.ts'
import type { Drop, Fix, Shape } from './normalize.ts'
import type { EncodedManifest, ManifestBlock } from './manifest.ts'
import { AbortError, ChunkerError, UnsupportedEntryError } from './errors.ts'

/** Where a content block's bytes live inside the packed tree. */
export interface BlockLocation {
  cid: string
  path: string
  offset: number
  length: number
}

export interface PackOptions {
  /** Files up to this many bytes are carried inside the manifest. Default DEFAULT_INLINE_MAX. */
  inlineMax?: number
  /** Inline bytes the whole layer carries at most. Default INLINE_BUDGET. */
  inlineBudget?: number
  /** Called once per content chunk, in order. */
  onBlock?: (location: BlockLocation) => void
  /**
   * Takes each entry-list block of the manifest as soon as it is complete, in
   * order; the result's `blocks` then holds the root alone.
   */
  onManifestBlock?: (block: ManifestBlock) => void
  /**
   * Change the tree so that it holds exactly what the manifest records (see
   * `Drop`): for a tree that becomes a layer dir, so that mounting it and
   * materializing its manifest show the same thing. Default false: the tree is
   * only read.
   */
  normalize?: boolean
  /** Which `overlay.opaque` marks an opaque dir: `trusted` (default as root) or `user` (for `userxattr` mounts). */
  opaqueNamespace?: OpaqueNamespace
  /** Each thing the manifest leaves out, and why (with `normalize`, it was removed). */
  onDrop?: (drop: Drop) => void
  /** As onDrop, one line each, when the tree is not normalized. */
  onWarning?: (warning: { path: string, message: string }) => void
  onProgress?: (event: { entries: number, bytes: number }) => void
  signal?: AbortSignal
  /** Worker threads to read and hash with; by default a pool made and closed for this call. */
  pool?: FsPool
}

export interface PackResult extends EncodedManifest {
  /** Distinct content blocks. */
  contentBlocks: number
}

/**
 * Files this small travel inside the manifest instead of as blocks of their own;
 * doc/DECISIONS.md has the measurement behind the figure.
 */
export const DEFAULT_INLINE_MAX = 4096

/**
 * Inline bytes one layer carries at most. Past it, small files become blocks as
 * larger ones do, so a tree of many small files cannot push its manifest past
 * LIMITS.manifestBytes. Counted in manifest order, so the same tree always
 * inlines the same files.
 */
export const INLINE_BUDGET = 64 * 1024 * 1024

function splitTime (ns: bigint): [number, number] {
  let sec = ns / 1_000_000_000n
  let nsec = ns % 1_000_000_000n
  if (nsec < 0n) {
    nsec += 1_000_000_000n
    sec -= 1n
  }
  return [Number(sec), Number(nsec)]
}

const S_IFMT = 0o170000
const SUID_SGID = 0o6000
const S_IFSOCK = 0o140000
const S_IFLNK = 0o120000
const S_IFREG = 0o100000
const S_IFBLK = 0o060000
const S_IFDIR = 0o040000
const S_IFCHR = 0o020000
const S_IFIFO = 0o010000

/**
 * The format's limits, enforced while walking so that a tree the format cannot
 * carry is refused before it moves. Only what the new name adds is checked: the
 * parent's path passed already, and readdir() gives no empty, '.', '..' or NUL
 * names. A UTF-16 unit is at most 3 bytes of UTF-8, so most paths need no count.
 */
function checkLimits (name: string, rel: string, depth: number): void {
  let problem: string | undefined
  if (depth > LIMITS.depth) problem = `path is deeper than ${LIMITS.depth} components`
  else if (rel.length * 3 > LIMITS.pathBytes && Buffer.byteLength(rel) > LIMITS.pathBytes) problem = `path is longer than ${LIMITS.pathBytes} bytes`
  else if (name.length * 3 > LIMITS.nameBytes && Buffer.byteLength(name) > LIMITS.nameBytes) problem = `path has a component longer than ${LIMITS.nameBytes} bytes`
  if (problem !== undefined) throw new UnsupportedEntryError(`the layer format cannot carry this path (${problem})`, { path: rel.slice(0, 300) })
}

function checkXattrs (xattrs: Array<[string, Uint8Array]>, rel: string): void {
  if (xattrs.length > LIMITS.xattrs) throw new UnsupportedEntryError(`more than ${LIMITS.xattrs} extended attributes`, { path: rel })
  for (const [name, value] of xattrs) {
    if (value.length > LIMITS.xattrValueBytes) throw new UnsupportedEntryError(`extended attribute ${name} is larger than ${LIMITS.xattrValueBytes} bytes`, { path: rel })
  }
}

/**
 * Strings built by concatenation are ropes in V8 that keep every piece alive.
 * Converting one to a number flattens it in place (reading a character does not).
 */
function flat (s: string): string {
  void Number(s)
  return s
}

function checkName (name: string, rel: string): void {
  // readdir() decodes names as UTF-8 and replaces invalid bytes with U+FFFD; such a
  // name cannot be written back, so it is refused rather than mangled.
  if (name.includes('\ufffd')) {
    throw new UnsupportedEntryError('file name is not valid UTF-8 (strata layers carry UTF-8 names only)', { path: rel })
  }
}

/**
 * Packs a directory (an OverlayFS upper dir) into a manifest. The main thread
 * walks the tree; worker threads read, chunk and hash file contents meanwhile.
 * Block bytes are not copied anywhere: `onBlock` reports where each one lives so
 * that the store can index it.
 */
export async function packTree (dir: string, opts: PackOptions = {}): Promise<PackResult> {
  const inlineMax = Math.min(opts.inlineMax ?? DEFAULT_INLINE_MAX, LIMITS.inlineBytes)
  const pool = opts.pool ?? new FsPool()
  try {
    return await pack(dir, opts, inlineMax, pool)
  } finally {
    if (opts.pool === undefined) await pool.close()
  }
}

// Paths per request to a worker. Smaller batches spread the work more evenly;
// each one costs a message both ways.
const BATCH_PATHS = 256

// Batches in flight at most: enough to keep every worker busy while the main
// thread lists directories, few enough that replies do not pile up in memory.
const MAX_IN_FLIGHT = 8

interface Batch {
  rels: string[]
  /** Which paths the walk took for directories and listed. */
  listed: boolean[]
  reply: Promise<WorkerResponse>
}

// Numbers the walks of this process, for the workers' record of hardlinks read.
let walks = 0

async function pack (dir: string, opts: PackOptions, inlineMax: number, pool: FsPool): Promise<PackResult> {
  const walk = ++walks
  const links = new Map<string, string>()
  const builder = new ManifestBuilder(opts.onManifestBlock !== undefined ? { onBlock: opts.onManifestBlock } : {})
  const batches: Batch[] = []
  let paths: string[] = []
  let rels: string[] = []
  let listed: boolean[] = []
  let entries = 0
  let bytes = 0
  const seen = new Set<string>()
  let contentBlocks = 0
  let inlined = 0
  const inlineBudget = opts.inlineBudget ?? INLINE_BUDGET
  const normalize = opts.normalize === true
  const ns = opts.opaqueNamespace ?? defaultOpaqueNamespace()
  // What normalizing will change, applied once the walk is over; kept only when normalizing.
  const fixes: Fix[] = []
  const fix = (f: Fix): void => { if (normalize) fixes.push(f) }
  // Hardlinked inodes whose first path was recreated: their other paths are linked to the new one.
  const recreated = new Set<string>()
  // Hardlinked symlinks, FIFOs and devices: the format links regular files only.
  const otherLinks = new Set<string>()
  const drop = (d: Drop): void => {
    opts.onDrop?.(d)
    if (!normalize) opts.onWarning?.({ path: d.path, message: d.reason })
  }
  /** The policy every layer keeps: no setuid/setgid bit, only the xattrs a layer carries. */
  const police = (rel: string, shape: Shape, rawMode: number, foreign: string[] | undefined): boolean => {
    if ((rawMode & SUID_SGID) !== 0) {
      drop({ path: rel, what: 'setuid', reason: 'setuid/setgid bit cleared: a layer never carries one (peers strip it)' })
      if (foreign === undefined && shape.type !== 'symlink') fix({ kind: 'chmod', path: rel, mode: shape.mode })
    }
    if (foreign === undefined) return false
    for (const name of foreign) {
      drop({ path: rel, what: 'xattr', name, reason: `xattr ${name} removed: a layer carries user.* xattrs only, and the overlay's own only as an opaque dir` })
    }
    fix({ kind: 'recreate', path: rel, shape })
    return true
  }

  const addChunks = (e: Entry, lengths: ArrayLike<number>, digests: Uint8Array): void => {
    const chunks: Chunk[] = []
    let offset = 0
    for (let i = 0; i < lengths.length; i++) {
      const length = lengths[i]!
      const cid = CID.createV1(RAW, Digest.create(SHA2_256, digests.subarray(i * 32, i * 32 + 32)))
      chunks.push({ cid, length })
      const text = cidString(cid)
      if (!seen.has(text)) {
        seen.add(text)
        contentBlocks++
      }
      if (opts.onBlock !== undefined) opts.onBlock({ cid: text, path: e.path, offset, length })
      offset += length
    }
    e.chunks = chunks
  }

  const flush = (): void => {
    if (paths.length === 0) return
    const reply = pool.request({ kind: 'entries', paths: paths.join('\0'), inlineMax, maxFileSize: LIMITS.fileSize, walk, opaque: ns })
    reply.catch(() => {}) // awaited in order by applyOldest; this only keeps an early failure from counting as unhandled
    batches.push({ rels, listed, reply })
    paths = []
    rels = []
    listed = []
  }

  /** Turns what a worker found about one path into its entry; undefined for what a layer leaves out. */
  const entryOf = (rel: string, wasListed: boolean, st: Float64Array, o: number, extra: EntryExtra | undefined, reply: EntriesReply): Entry | undefined => {
    if (extra?.error !== undefined) throw new ChunkerError(extra.error.code, extra.error.message, { path: rel })
    const fmt = st[o + X.mode]! & S_IFMT
    // The walk listed what readdir() called a directory: anything else means the tree is changing under it.
    if ((fmt === S_IFDIR) !== wasListed) throw new ChunkerError('ERR_CHANGED', 'changed to or from a directory while packing', { path: rel })
    const rawMode = st[o + X.mode]! & 0o7777
    const e: Entry = {
      path: rel,
      type: 'file',
      mode: rawMode & ~SUID_SGID,
      uid: st[o + X.uid]!,
      gid: st[o + X.gid]!,
      mtime: [st[o + X.mtimeSec]!, st[o + X.mtimeNsec]!],
      size: 0
    }
    if (extra?.xattrs !== undefined) {
      checkXattrs(extra.xattrs, rel)
      e.xattrs = extra.xattrs
    }
    if (fmt === S_IFDIR) {
      e.type = 'dir'
      if (extra?.opaque === true) e.opaque = true
    } else if (fmt === S_IFREG) {
      const inode = st[o + X.nlink]! > 1 ? `${st[o + X.dev]}:${st[o + X.ino]}` : undefined
      const first = inode !== undefined ? links.get(inode) : undefined
      if (first !== undefined) {
        e.type = 'hardlink'
        e.target = first
        if (recreated.has(inode!)) fix({ kind: 'relink', path: rel, to: first })
        return e
      }
      if (inode !== undefined) links.set(inode, rel)
      if (police(rel, e, rawMode, extra?.foreign) && inode !== undefined) recreated.add(inode)
      // A worker leaves unread only an inode it read for an earlier path of this walk.
      if (extra?.linkSeen === true) throw new ChunkerError('ERR_CHANGED', 'a hardlinked file was first seen at a later path than a worker read it at', { path: rel })
      e.size = st[o + X.size]!
      if (e.size > LIMITS.fileSize) throw new UnsupportedEntryError(`file larger than ${LIMITS.fileSize} bytes`, { path: rel })
      if (extra?.readError !== undefined) {
        const { code, message } = extra.readError
        if (code === 'ERR_CHANGED') throw new ChunkerError(code, message, { path: rel })
        throw new ChunkerError(code, `cannot read file: ${message}`, { path: rel })
      }
      bytes += e.size
      const dataLength = st[o + DATA_LENGTH]!
      if (dataLength >= 0) {
        const data = reply.data.subarray(st[o + DATA_START]!, st[o + DATA_START]! + dataLength)
        if (inlined + data.length <= inlineBudget) {
          inlined += data.length
          e.data = data
        } else {
          // Smaller than MIN_CHUNK, so FastCDC makes it one chunk: the whole file.
          addChunks(e, [data.length], hash('sha256', data, 'buffer'))
        }
      } else if (e.size > 0) {
        const start = st[o + CHUNK_START]!
        const end = start + st[o + CHUNK_COUNT]!
        addChunks(e, reply.lengths.subarray(start, end), reply.digests.subarray(start * 32, end * 32))
      }
    } else if (fmt === S_IFLNK) {
      e.type = 'symlink'
      const target = extra!.target!
      if (target.includes('\ufffd')) throw new UnsupportedEntryError('symlink target is not valid UTF-8', { path: rel })
      if (Buffer.byteLength(target) > LIMITS.symlinkBytes) throw new UnsupportedEntryError(`symlink target longer than ${LIMITS.symlinkBytes} bytes`, { path: rel })
      e.target = target
    } else if (fmt === S_IFCHR && st[o + X.rdevMajor] === 0 && st[o + X.rdevMinor] === 0) {
      e.type = 'whiteout'
    } else if (fmt === S_IFCHR || fmt === S_IFBLK) {
      e.type = fmt === S_IFCHR ? 'chardev' : 'blockdev'
      e.rdev = [st[o + X.rdevMajor]!, st[o + X.rdevMinor]!]
    } else if (fmt === S_IFIFO) {
      e.type = 'fifo'
    } else if (fmt === S_IFSOCK) {
      drop({ path: rel, what: 'socket', reason: 'socket skipped: it is runtime state of the process that bound it' })
      fix({ kind: 'remove', path: rel })
      return undefined
    } else {
      throw new UnsupportedEntryError('unknown file type', { path: rel })
    }
    if (e.type === 'file') return e
    if (e.type !== 'dir' && e.type !== 'whiteout' && st[o + X.nlink]! > 1) {
      const inode = `${st[o + X.dev]}:${st[o + X.ino]}`
      if (otherLinks.has(inode)) {
        drop({ path: rel, what: 'link', reason: `hardlinked ${e.type} made a copy of its own: a layer links regular files only` })
        fix({ kind: 'recreate', path: rel, shape: e })
        return e
      }
      otherLinks.add(inode)
    }
    police(rel, e, rawMode, extra?.foreign)
    return e
  }

  // Replies are applied strictly in the order of the walk: that is manifest order,
  // which decides which of several hardlinked paths is the file and which small
  // files fit the inline budget.
  const applyOldest = async (): Promise<void> => {
    const b = batches[0]!
    const reply = (await b.reply).entries!
    batches.shift()
    let x = 0
    for (let k = 0; k < b.rels.length; k++) {
      const extra = reply.extras[x]?.[0] === k ? reply.extras[x++]![1] : undefined
      const e = entryOf(b.rels[k]!, b.listed[k]!, reply.stats, k * STAT_FIELDS, extra, reply)
      if (e === undefined) continue
      builder.add(e)
      if ((++entries & 0x3ff) === 0) opts.onProgress?.({ entries, bytes })
    }
  }

  const rootStat = lstatSync(dir, { bigint: true })
  if (!rootStat.isDirectory()) throw new UnsupportedEntryError('not a directory', { path: dir })
  const rootX = readXattrs(dir, true, ns)
  const rootMode = Number(rootStat.mode & 0o7777n)
  const root: RootAttributes = {
    mode: rootMode & ~SUID_SGID,
    uid: Number(rootStat.uid),
    gid: Number(rootStat.gid),
    mtime: splitTime(rootStat.mtimeNs)
  }
  if (rootX.xattrs !== undefined) root.xattrs = rootX.xattrs
  if (rootX.opaque) root.opaque = true
  police('', { type: 'dir', ...root }, rootMode, rootX.foreign)

  // The main thread only lists directories, in manifest order; the workers do
  // everything else per path (lstat, xattrs, readlink, read and hash).
  const visit = async (abs: string, rel: string, depth: number): Promise<void> => {
    const children = readdirSync(abs, { withFileTypes: true }).sort(byName)
    for (const child of children) {
      if (opts.signal?.aborted === true) throw new AbortError({ cause: opts.signal.reason })
      const name = child.name
      const childRel = flat(rel === '' ? name : `${rel}/${name}`)
      checkName(name, childRel)
      checkLimits(name, childRel, depth)
      const childAbs = `${abs}/${name}`
      const isDir = child.isDirectory()
      paths.push(childAbs)
      rels.push(childRel)
      listed.push(isDir)
      if (paths.length >= BATCH_PATHS) {
        flush()
        while (batches.length >= MAX_IN_FLIGHT) await applyOldest()
      }
      if (isDir) await visit(flat(childAbs), childRel, depth + 1)
    }
  }

  await visit(dir, '', 1)
  flush()
  while (batches.length > 0) {
    if (opts.signal?.aborted === true) throw new AbortError({ cause: opts.signal.reason })
    await applyOldest()
  }
  opts.onProgress?.({ entries, bytes })
  const result = { ...builder.finish(root), contentBlocks }
  // After the walk, so that no worker reads a path while it is being replaced.
  if (fixes.length > 0) applyFixes(dir, fixes, ns)
  return result
}

function byName (a: Dirent, b: Dirent): number {
  return compareNames(a.name, b.name)
}
