import { createHash } from 'node:crypto'
import type { Hash } from 'node:crypto'
import { lstatSync, readdirSync } from 'node:fs'
import { setImmediate as yieldLoop } from 'node:timers/promises'
import { statTreeAsync } from '@strata/sys'

/**
 * A digest of what the kernel says about every path of a layer dir: inode, mode,
 * status change time (ns) and size, as git's index keeps them. A whiteout's ctime is
 * left out: overlay links the whiteouts of one run to one inode in its work dir, and
 * removing that dir moves their ctime after the commit. A write, truncate, chmod,
 * chown, xattr change, rename or new link through the filesystem moves ctime, and
 * no system call sets ctime back, so the owner of the data dir cannot change a
 * committed layer through the filesystem and leave its fingerprint as it was.
 */
export interface Fingerprint {
  /** Hex sha256 over the lines of `statTree` (the path, inode, mode, ctime, size of every path). */
  digest: string
  /** Paths walked, the root dir included. */
  paths: number
}

/** Bounds the walk's output (a layer's entry count is bounded by the format, its paths by PATH_MAX). */
const MAX_LINES_BYTES = 1 << 30

/** Paths stat'ed between two turns of the event loop by the walk in JS, so that it does not stall a daemon. */
const YIELD_EVERY = 2048

/** Walks `dir` (never following a symlink) and digests each path's stat. `native: false` walks with node:fs (as a build without statTree does). */
export async function fingerprint (dir: string, opts: { signal?: AbortSignal, native?: boolean } = {}): Promise<Fingerprint> {
  const h = createHash('sha256')
  if (statTreeAsync !== undefined && opts.native !== false) {
    // On a libuv thread: a daemon checking a large layer for a hit keeps serving meanwhile.
    const lines = await statTreeAsync(dir, MAX_LINES_BYTES)
    opts.signal?.throwIfAborted()
    h.update(lines)
    return { digest: h.digest('hex'), paths: countLines(lines) }
  }
  return await fingerprintJs(dir, h, opts)
}

function countLines (b: Buffer): number {
  let n = 0
  for (let i = b.indexOf(10); i !== -1; i = b.indexOf(10, i + 1)) n++
  return n
}


/** The same lines as the native statTree, from node:fs, for a build of @strata/sys without it. */
async function fingerprintJs (dir: string, h: Hash, opts: { signal?: AbortSignal }): Promise<Fingerprint> {
  let paths = 0
  const line = (rel: Buffer, abs: Buffer): boolean => {
    const st = lstatSync(abs, { bigint: true })
    const ctime = st.isCharacterDevice() && st.rdev === 0n ? 0n : st.ctimeNs
    h.update(rel)
    h.update(`\0${st.ino}\0${st.mode}\0${ctime}\0${st.size}\n`)
    paths++
    return st.isDirectory()
  }
  const walk = async (rel: Buffer, abs: Buffer): Promise<void> => {
    const names = readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare)
    for (const name of names) {
      const r = rel.length === 0 ? name : Buffer.concat([rel, Buffer.from('/'), name])
      const a = Buffer.concat([abs, Buffer.from('/'), name])
      if (line(r, a)) await walk(r, a)
      if (paths % YIELD_EVERY === 0) {
        opts.signal?.throwIfAborted()
        await yieldLoop()
      }
    }
  }
  const root = Buffer.from(dir)
  line(Buffer.alloc(0), root)
  await walk(Buffer.alloc(0), root)
  return { digest: h.digest('hex'), paths }
}

export function encodeFingerprint (f: Fingerprint): Uint8Array {
  return Buffer.from(JSON.stringify({ v: 3, digest: f.digest, paths: f.paths }))
}

/** The stored fingerprint; undefined for one of another version (it is then not compared). */
export function decodeFingerprint (raw: Uint8Array): Fingerprint | undefined {
  try {
    const o = JSON.parse(Buffer.from(raw).toString()) as { v?: unknown, digest?: unknown, paths?: unknown }
    if (o.v !== 3 || typeof o.digest !== 'string' || typeof o.paths !== 'number') return undefined
    return { digest: o.digest, paths: o.paths }
  } catch {
    return undefined
  }
}
