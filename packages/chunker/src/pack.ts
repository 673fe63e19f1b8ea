import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, readSync } from 'node:fs'
import type { BigIntStats } from 'node:fs'
import { lgetxattrs } from '@strata/sys'
import { chunkReader, MAX_CHUNK } from './fastcdc.ts'
import { cidOf, RAW } from './cid.ts'
import { compareNames } from './entry.ts'
import type { Chunk, Entry, RootAttributes } from './entry.ts'
import { ManifestBuilder, LIMITS } from './manifest.ts'
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
  /** Called once per content chunk, in order. */
  onBlock?: (location: BlockLocation) => void
  /** Things skipped with a reason (sockets). */
  onWarning?: (warning: { path: string, message: string }) => void
  onProgress?: (event: { entries: number, bytes: number }) => void
  signal?: AbortSignal
}

export interface PackResult extends EncodedManifest {
  /** Distinct content blocks. */
  contentBlocks: number
}

/** Files this small travel inside the manifest; see doc/FORMAT.md for the measurement behind it. */
export const DEFAULT_INLINE_MAX = 0

// The overlay filesystem's own bookkeeping: the opaque marker becomes the entry's
// `opaque` flag, the rest (origin file handles, impure, redirect...) only means
// something to the mount that wrote it.
const OVERLAY_XATTR = /^(trusted|user)\.overlay\./
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

function major (rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn))
}

function minor (rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn))
}

function checkName (name: string, rel: string): void {
  // readdir() decodes names as UTF-8 and replaces invalid bytes with U+FFFD; such a
  // name cannot be written back, so it is refused rather than mangled.
  if (name.includes('\ufffd')) {
    throw new UnsupportedEntryError('file name is not valid UTF-8 (strata layers carry UTF-8 names only)', { path: rel })
  }
}

/**
 * Packs a directory (an OverlayFS upper dir) into a manifest. File contents are
 * chunked and hashed; block bytes are not copied anywhere: `onBlock` reports
 * where each one lives so that the store can index it.
 */
export function packTree (dir: string, opts: PackOptions = {}): PackResult {
  const inlineMax = Math.min(opts.inlineMax ?? DEFAULT_INLINE_MAX, LIMITS.inlineBytes)
  const builder = new ManifestBuilder()
  const links = new Map<string, string>()
  const seen = new Set<string>()
  const scratch = new Uint8Array(4 * MAX_CHUNK)
  let entries = 0
  let bytes = 0
  let contentBlocks = 0

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

  const readContent = (abs: string, rel: string, st: BigIntStats): Pick<Entry, 'chunks' | 'data'> => {
    const fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW)
    try {
      const now = fstatSync(fd, { bigint: true })
      if (now.ino !== st.ino || now.dev !== st.dev) throw new ChunkerError('ERR_CHANGED', 'file replaced while packing', { path: rel })
      const size = Number(st.size)
      let total = 0
      if (size <= inlineMax) {
        const data = new Uint8Array(size)
        while (total < size) {
          const n = readSync(fd, data, total, size - total, null)
          if (n === 0) break
          total += n
        }
        if (total !== size || readSync(fd, scratch, 0, 1, null) !== 0) throw new ChunkerError('ERR_CHANGED', 'file changed size while packing', { path: rel })
        return { data }
      }
      const chunks: Chunk[] = []
      chunkReader((buf, off, len) => readSync(fd, buf, off, len, null), (chunk) => {
        const cid = cidOf(RAW, chunk)
        chunks.push({ cid, length: chunk.length })
        const key = cid.toString()
        if (!seen.has(key)) {
          seen.add(key)
          contentBlocks++
        }
        opts.onBlock?.({ cid: key, path: rel, offset: total, length: chunk.length })
        total += chunk.length
      }, scratch)
      if (total !== size) throw new ChunkerError('ERR_CHANGED', 'file changed size while packing', { path: rel })
      return { chunks }
    } finally {
      closeSync(fd)
    }
  }

  const visit = (abs: string, rel: string): void => {
    const names = readdirSync(abs).sort(compareNames)
    for (const name of names) {
      if (opts.signal?.aborted === true) throw new AbortError({ cause: opts.signal.reason })
      const childRel = rel === '' ? name : `${rel}/${name}`
      checkName(name, childRel)
      const childAbs = `${abs}/${name}`
      const st = lstatSync(childAbs, { bigint: true })
      const x = readXattrs(childAbs)
      const e: Entry = {
        path: childRel,
        type: 'file',
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtime: splitTime(st.mtimeNs),
        size: 0
      }
      if (x.xattrs !== undefined) e.xattrs = x.xattrs
      if (st.isDirectory()) {
        e.type = 'dir'
        if (x.opaque) e.opaque = true
        builder.add(e)
        entries++
        visit(childAbs, childRel)
        continue
      } else if (st.isFile()) {
        if (st.nlink > 1n) {
          const inode = `${st.dev}:${st.ino}`
          const first = links.get(inode)
          if (first !== undefined) {
            e.type = 'hardlink'
            e.target = first
            builder.add(e)
            entries++
            continue
          }
          links.set(inode, childRel)
        }
        e.size = Number(st.size)
        if (e.size > LIMITS.fileSize) throw new UnsupportedEntryError(`file larger than ${LIMITS.fileSize} bytes`, { path: childRel })
        Object.assign(e, readContent(childAbs, childRel, st))
        bytes += e.size
      } else if (st.isSymbolicLink()) {
        e.type = 'symlink'
        const target = readlinkSync(childAbs)
        if (target.includes('\ufffd')) throw new UnsupportedEntryError('symlink target is not valid UTF-8', { path: childRel })
        e.target = target
      } else if (st.isCharacterDevice() && st.rdev === 0n) {
        e.type = 'whiteout'
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        e.type = st.isCharacterDevice() ? 'chardev' : 'blockdev'
        e.rdev = [major(st.rdev), minor(st.rdev)]
      } else if (st.isFIFO()) {
        e.type = 'fifo'
      } else if (st.isSocket()) {
        opts.onWarning?.({ path: childRel, message: 'socket skipped: a socket has no meaning outside the process that bound it' })
        continue
      } else {
        throw new UnsupportedEntryError('unknown file type', { path: childRel })
      }
      builder.add(e)
      entries++
      if ((entries & 0x3ff) === 0) opts.onProgress?.({ entries, bytes })
    }
  }

  visit(dir, '')
  opts.onProgress?.({ entries, bytes })
  return { ...builder.finish(root), contentBlocks }
}
