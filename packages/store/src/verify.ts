import { closeSync, constants, lstatSync, openSync, readdirSync, readlinkSync, readSync } from 'node:fs'
import type { Stats } from 'node:fs'
import { setImmediate as yieldLoop } from 'node:timers/promises'
import { verifyBlock } from '@strata/chunker'
import type { Entry } from '@strata/chunker'

/** What is wrong with one path of a layer dir, against its manifest. */
export type LayerProblem = 'missing' | 'type' | 'size' | 'content' | 'mode' | 'owner' | 'target' | 'extra' | 'manifest' | 'stat'

export interface TreeCheck {
  files: number
  bytes: number
  /** The first path found wrong, if any. */
  bad?: { path: string, problem: LayerProblem }
}

export interface VerifyTreeOptions {
  /** The layer came from a peer: setuid and setgid were stripped from what its manifest says. */
  untrusted?: boolean
  signal?: AbortSignal
  /** Called after each file's content was read, with its bytes: a caller that paces the reads waits here. */
  onRead?: (bytes: number) => Promise<void> | void
}

/** Bytes read between two turns of the event loop when nobody paces the reads. */
const YIELD_BYTES = 8 * 1024 * 1024

/**
 * Checks a layer dir against its manifest entries: every entry is there with its
 * type, mode, owner, size and symlink target; every file's content hashes to its
 * chunks (or equals its inline bytes); and the dir holds nothing else. Xattrs and
 * times are not compared. Stops at the first path found wrong.
 */
export async function verifyTree (dir: string, entries: AsyncIterable<Entry>, opts: VerifyTreeOptions = {}): Promise<TreeCheck> {
  const out: TreeCheck = { files: 0, bytes: 0 }
  const seen = new Set<string>()
  const inodes = new Map<string, bigint>()
  let sinceYield = 0
  const modeMask = opts.untrusted === true ? 0o1777 : 0o7777
  for await (const e of entries) {
    opts.signal?.throwIfAborted()
    seen.add(e.path)
    const abs = `${dir}/${e.path}`
    let st: Stats
    try {
      st = lstatSync(abs)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return { ...out, bad: { path: e.path, problem: 'missing' } }
      throw err
    }
    const bad = (problem: LayerProblem): TreeCheck => ({ ...out, bad: { path: e.path, problem } })
    if (!typeMatches(e, st)) return bad('type')
    if (e.type === 'hardlink') {
      if (inodes.get(e.target ?? '') !== BigInt(st.ino)) return bad('target')
      continue
    }
    if (e.type !== 'symlink' && (st.mode & modeMask) !== (e.mode & modeMask)) return bad('mode')
    if (st.uid !== e.uid || st.gid !== e.gid) return bad('owner')
    if (e.type === 'symlink') {
      if (readlinkSync(abs) !== e.target) return bad('target')
      continue
    }
    if (e.type !== 'file') continue
    inodes.set(e.path, BigInt(st.ino))
    if (st.size !== e.size) return bad('size')
    if (!fileMatches(abs, e)) return bad('content')
    out.files++
    out.bytes += e.size
    sinceYield += e.size
    if (opts.onRead !== undefined) await opts.onRead(e.size)
    else if (sinceYield >= YIELD_BYTES) {
      sinceYield = 0
      await yieldLoop()
    }
  }
  const extra = findExtra(dir, '', seen)
  if (extra !== undefined) return { ...out, bad: { path: extra, problem: 'extra' } }
  return out
}

function typeMatches (e: Entry, st: Stats): boolean {
  switch (e.type) {
    case 'file': case 'hardlink': return st.isFile()
    case 'dir': return st.isDirectory()
    case 'symlink': return st.isSymbolicLink()
    case 'whiteout': return st.isCharacterDevice() && st.rdev === 0
    case 'fifo': return st.isFIFO()
    case 'chardev': return st.isCharacterDevice()
    case 'blockdev': return st.isBlockDevice()
  }
}

/** Whether the file's bytes are the entry's: its inline data, or each chunk at its offset hashing to its CID. */
function fileMatches (path: string, e: Entry): boolean {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    if (e.data !== undefined) {
      const buf = Buffer.allocUnsafe(e.data.length)
      return readFull(fd, buf, 0) === e.data.length && buf.equals(e.data)
    }
    let offset = 0
    for (const c of e.chunks ?? []) {
      const buf = Buffer.allocUnsafe(c.length)
      if (readFull(fd, buf, offset) !== c.length) return false
      try {
        verifyBlock(c.cid, buf)
      } catch {
        return false
      }
      offset += c.length
    }
    return offset === e.size
  } finally {
    closeSync(fd)
  }
}

function readFull (fd: number, buf: Buffer, position: number): number {
  let got = 0
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, position + got)
    if (n === 0) break
    got += n
  }
  return got
}

/** The first path under `dir` that is not in `known`, depth first. */
function findExtra (dir: string, rel: string, known: Set<string>): string | undefined {
  for (const d of readdirSync(rel === '' ? dir : `${dir}/${rel}`, { withFileTypes: true })) {
    const r = rel === '' ? d.name : `${rel}/${d.name}`
    if (!known.has(r)) return r
    if (d.isDirectory()) {
      const found = findExtra(dir, r, known)
      if (found !== undefined) return found
    }
  }
  return undefined
}
