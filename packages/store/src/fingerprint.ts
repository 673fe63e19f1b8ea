import { createHash } from 'node:crypto'
import { lstatSync, readdirSync } from 'node:fs'
import { setImmediate as yieldLoop } from 'node:timers/promises'

/**
 * A digest of what the kernel says about every path of a layer dir: inode, status
 * change time and size, as git's index keeps them. A write, truncate, chmod,
 * chown, xattr change, rename or new link through the filesystem moves ctime, and
 * no system call sets ctime back, so the owner of the data dir cannot change a
 * committed layer through the filesystem and leave its fingerprint as it was.
 */
export interface Fingerprint {
  /** Hex sha256 over the sorted (path, inode, ctime, size) lines. */
  digest: string
  /** Paths walked, the root dir included. */
  paths: number
}

/** Paths stat'ed between two turns of the event loop, so that a big layer's walk does not stall a daemon. */
const YIELD_EVERY = 2048

/** Walks `dir` (never following a symlink) and digests each path's stat. */
export async function fingerprint (dir: string, opts: { signal?: AbortSignal } = {}): Promise<Fingerprint> {
  const h = createHash('sha256')
  let paths = 0
  const line = (rel: string, abs: string): void => {
    // ctime as node's double of milliseconds: a quarter of a microsecond apart still
    // differ, and a bigint stat costs more on a walk of tens of thousands of files.
    const st = lstatSync(abs)
    h.update(`${rel}\0${st.ino}\0${st.ctimeMs}\0${st.size}\n`)
    paths++
  }
  line('', dir)
  const stack: string[] = ['']
  while (stack.length > 0) {
    const rel = stack.pop()!
    const abs = rel === '' ? dir : `${dir}/${rel}`
    const names = readdirSync(abs, { withFileTypes: true })
    names.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    // Reversed onto the stack, so that sub-directories are walked in name order.
    for (let i = names.length - 1; i >= 0; i--) {
      const d = names[i]!
      const r = rel === '' ? d.name : `${rel}/${d.name}`
      line(r, `${abs}/${d.name}`)
      if (d.isDirectory()) stack.push(r)
      if (paths % YIELD_EVERY === 0) {
        opts.signal?.throwIfAborted()
        await yieldLoop()
      }
    }
  }
  return { digest: h.digest('hex'), paths }
}

export function encodeFingerprint (f: Fingerprint): Uint8Array {
  return Buffer.from(JSON.stringify({ v: 1, digest: f.digest, paths: f.paths }))
}

export function decodeFingerprint (raw: Uint8Array): Fingerprint | undefined {
  try {
    const o = JSON.parse(Buffer.from(raw).toString()) as { v?: unknown, digest?: unknown, paths?: unknown }
    if (o.v !== 1 || typeof o.digest !== 'string' || typeof o.paths !== 'number') return undefined
    return { digest: o.digest, paths: o.paths }
  } catch {
    return undefined
  }
}
