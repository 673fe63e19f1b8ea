import { createHash } from 'node:crypto'
import { lstatSync, readdirSync, readlinkSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { lgetxattrs, lstatx, X } from '@strata/sys'
import { cidString, RAW, SHA2_256 } from './cid.ts'
import { FsPool } from './fs-pool.ts'
import type { HashItem, WorkerResponse } from './fs-pool.ts'
import { compareNames } from './entry.ts'
import type { Chunk, Entry, RootAttributes } from './entry.ts'
import { checkPath, ManifestBuilder, LIMITS, OVERLAY_XATTR } from './manifest.ts'
import type { EncodedManifest } from './manifest.ts'
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
  /** Things skipped with a reason (sockets). */
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

// The overlay filesystem's own bookkeeping: the opaque marker becomes the entry's
// `opaque` flag, the rest (origin file handles, impure, redirect...) only means
// something to the mount that wrote it.
const OPAQUE_XATTRS = new Set(['trusted.overlay.opaque', 'user.overlay.opaque'])

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
const S_IFSOCK = 0o140000
const S_IFLNK = 0o120000
const S_IFREG = 0o100000
const S_IFBLK = 0o060000
const S_IFDIR = 0o040000
const S_IFCHR = 0o020000
const S_IFIFO = 0o010000
const NO_XATTRS = { xattrs: undefined, opaque: false }

function readXattrs (abs: string): { xattrs: Array<[string, Uint8Array]> | undefined, opaque: boolean } {
  const all = lgetxattrs(abs)
  if (all.length === 0) return { xattrs: undefined, opaque: false }
  let opaque = false
  const kept: Array<[string, Uint8Array]> = []
  for (const [name, value] of all) {
    if (OVERLAY_XATTR.test(name)) {
      if (OPAQUE_XATTRS.has(name) && value.length === 1 && value[0] === 0x79 /* y */) opaque = true
      continue
    }
    kept.push([name, new Uint8Array(value)])
  }
  return { xattrs: kept.length > 0 ? kept : undefined, opaque }
}

/** The format's limits, enforced while walking so that a tree the format cannot carry is refused before it moves. */
function checkLimits (rel: string): void {
  try {
    checkPath(rel)
  } catch (err) {
    throw new UnsupportedEntryError(`the layer format cannot carry this path (${(err as Error).message.replace(/: ".*$/, '')})`, { path: rel.slice(0, 300), cause: err })
  }
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

const BATCH_FILES = 256
const BATCH_BYTES = 16 * 1024 * 1024

// Hash batches in flight at most: enough to keep every worker busy while the
// main thread walks, few enough that entries do not pile up in memory.
const MAX_IN_FLIGHT = 8

async function pack (dir: string, opts: PackOptions, inlineMax: number, pool: FsPool): Promise<PackResult> {
  const links = new Map<string, string>()
  const builder = new ManifestBuilder()
  // Entries not yet handed to the builder, in order; file entries wait for their content.
  const entries: Array<Entry | undefined> = []
  let emitted = 0
  const batches: Array<{ indexes: number[], reply: Promise<WorkerResponse> }> = []
  let batch: HashItem[] = []
  let batchIndexes: number[] = []
  let batchBytes = 0
  let bytes = 0
  const seen = new Set<string>()
  let contentBlocks = 0
  let inlined = 0
  const inlineBudget = opts.inlineBudget ?? INLINE_BUDGET

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
    if (batch.length === 0) return
    const reply = pool.request({ kind: 'hash', items: batch, inlineMax })
    reply.catch(() => {}) // awaited in order by applyOldest; this only keeps an early failure from counting as unhandled
    batches.push({ indexes: batchIndexes, reply })
    batch = []
    batchIndexes = []
    batchBytes = 0
  }

  const emitReady = (): void => {
    const limit = batches[0]?.indexes[0] ?? batchIndexes[0] ?? entries.length
    for (; emitted < limit; emitted++) {
      builder.add(entries[emitted]!)
      entries[emitted] = undefined
    }
  }

  const applyOldest = async (): Promise<void> => {
    const b = batches[0]!
    const reply = await b.reply
    batches.shift()
    reply.results.forEach((r, k) => {
      const e = entries[b.indexes[k]!]!
      if ('error' in r) {
        if (r.error.code === 'ERR_CHANGED') throw new ChunkerError('ERR_CHANGED', r.error.message, { path: e.path })
        throw new ChunkerError(r.error.code, `cannot read file: ${r.error.message}`, { path: e.path })
      }
      if ('data' in r) {
        if (inlined + r.data.length <= inlineBudget) {
          inlined += r.data.length
          e.data = r.data
        } else {
          // Smaller than MIN_CHUNK, so FastCDC makes it one chunk: the whole file.
          addChunks(e, [r.data.length], createHash('sha256').update(r.data).digest())
        }
        return
      }
      addChunks(e, r.lengths, r.digests)
    })
    emitReady()
  }

  const rootStat = lstatSync(dir, { bigint: true })
  if (!rootStat.isDirectory()) throw new UnsupportedEntryError('not a directory', { path: dir })
  const rootX = readXattrs(dir)
  const root: RootAttributes = {
    mode: Number(rootStat.mode & 0o7777n),
    uid: Number(rootStat.uid),
    gid: Number(rootStat.gid),
    mtime: splitTime(rootStat.mtimeNs)
  }
  if (rootX.xattrs !== undefined) root.xattrs = rootX.xattrs
  if (rootX.opaque) root.opaque = true

  const st = new Float64Array(12)
  const visit = async (abs: string, rel: string): Promise<void> => {
    const names = readdirSync(abs).sort(compareNames)
    for (const name of names) {
      if (opts.signal?.aborted === true) throw new AbortError({ cause: opts.signal.reason })
      while (batches.length >= MAX_IN_FLIGHT) await applyOldest()
      const childRel = flat(rel === '' ? name : `${rel}/${name}`)
      checkName(name, childRel)
      checkLimits(childRel)
      const childAbs = flat(`${abs}/${name}`)
      // One native call per entry, no Stats object: this walk is the main thread's whole job.
      lstatx(childAbs, st)
      const fmt = st[X.mode]! & S_IFMT
      const x = st[X.hasXattrs] === 1 ? readXattrs(childAbs) : NO_XATTRS
      const e: Entry = {
        path: childRel,
        type: 'file',
        mode: st[X.mode]! & 0o7777,
        uid: st[X.uid]!,
        gid: st[X.gid]!,
        mtime: [st[X.mtimeSec]!, st[X.mtimeNsec]!],
        size: 0
      }
      if (x.xattrs !== undefined) {
        checkXattrs(x.xattrs, childRel)
        e.xattrs = x.xattrs
      }
      if (fmt === S_IFDIR) {
        e.type = 'dir'
        if (x.opaque) e.opaque = true
        entries.push(e)
        await visit(childAbs, childRel)
        continue
      } else if (fmt === S_IFREG) {
        const inode = st[X.nlink]! > 1 ? `${st[X.dev]}:${st[X.ino]}` : undefined
        const first = inode !== undefined ? links.get(inode) : undefined
        if (first !== undefined) {
          e.type = 'hardlink'
          e.target = first
        } else {
          if (inode !== undefined) links.set(inode, childRel)
          e.size = st[X.size]!
          if (e.size > LIMITS.fileSize) throw new UnsupportedEntryError(`file larger than ${LIMITS.fileSize} bytes`, { path: childRel })
          bytes += e.size
          if (e.size > 0) {
            batch.push({ abs: childAbs, rel: childRel, size: e.size })
            batchIndexes.push(entries.length)
            batchBytes += e.size
          }
        }
      } else if (fmt === S_IFLNK) {
        e.type = 'symlink'
        const target = readlinkSync(childAbs)
        if (target.includes('\ufffd')) throw new UnsupportedEntryError('symlink target is not valid UTF-8', { path: childRel })
        if (Buffer.byteLength(target) > LIMITS.symlinkBytes) throw new UnsupportedEntryError(`symlink target longer than ${LIMITS.symlinkBytes} bytes`, { path: childRel })
        e.target = target
      } else if (fmt === S_IFCHR && st[X.rdevMajor] === 0 && st[X.rdevMinor] === 0) {
        e.type = 'whiteout'
      } else if (fmt === S_IFCHR || fmt === S_IFBLK) {
        e.type = fmt === S_IFCHR ? 'chardev' : 'blockdev'
        e.rdev = [st[X.rdevMajor]!, st[X.rdevMinor]!]
      } else if (fmt === S_IFIFO) {
        e.type = 'fifo'
      } else if (fmt === S_IFSOCK) {
        opts.onWarning?.({ path: childRel, message: 'socket skipped: a socket has no meaning outside the process that bound it' })
        continue
      } else {
        throw new UnsupportedEntryError('unknown file type', { path: childRel })
      }
      entries.push(e)
      if (batch.length >= BATCH_FILES || batchBytes >= BATCH_BYTES) flush()
      if ((entries.length & 0x3ff) === 0) opts.onProgress?.({ entries: entries.length, bytes })
    }
  }

  await visit(dir, '')
  flush()
  while (batches.length > 0) await applyOldest()
  emitReady()
  opts.onProgress?.({ entries: entries.length, bytes })
  return { ...builder.finish(root), contentBlocks }
}
