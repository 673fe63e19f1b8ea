import type { CID } from 'multiformats/cid'

/**
 * What a layer records for one path, in OverlayFS upper-dir terms. A whiteout
 * hides a lower path; an opaque directory hides the lower directory's contents.
 */
export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'whiteout' | 'fifo' | 'chardev' | 'blockdev'

export interface Chunk {
  cid: CID
  length: number
}

export interface Entry {
  /** Relative, '/'-separated, no empty, '.' or '..' component. */
  path: string
  type: EntryType
  /** Permission bits including setuid, setgid and sticky (mode & 0o7777). */
  mode: number
  uid: number
  gid: number
  /** Seconds and nanoseconds since the epoch. */
  mtime: [number, number]
  /** File content length (0 for anything but files). */
  size: number
  /** Extended attributes sorted by name, overlay's own attributes excluded. */
  xattrs?: Array<[string, Uint8Array]>
  /** Directory only: hides the contents of the same directory in lower layers. */
  opaque?: boolean
  /** Symlink target (as stored) or, for a hardlink, the path of the file it links to. */
  target?: string
  /** File content as chunks, in order. */
  chunks?: Chunk[]
  /** File content carried inside the manifest (small files). */
  data?: Uint8Array
  /** chardev and blockdev: [major, minor]. */
  rdev?: [number, number]
}

/** Attributes of the layer's root directory itself. */
export interface RootAttributes {
  mode: number
  uid: number
  gid: number
  mtime: [number, number]
  xattrs?: Array<[string, Uint8Array]>
  opaque?: boolean
}

// JS compares strings by UTF-16 code unit; the format orders names by UTF-8
// bytes. The two differ only between surrogates and U+E000..U+FFFF: move
// surrogates above them.
function unitOrder (cu: number): number {
  return cu < 0xd800 ? cu : cu >= 0xe000 ? cu - 0x800 : cu + 0x2000
}

/** Compares two names (no '/') by their UTF-8 bytes. */
export function compareNames (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return unitOrder(x) - unitOrder(y)
  }
  return a.length - b.length
}

/**
 * The order of entries in a manifest: depth-first, siblings by name bytes
 * (paths compared component by component), so a directory precedes its contents.
 */
export function comparePaths (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    if (x === 0x2f) return -1 // '/' ends a component: the shorter name sorts first
    if (y === 0x2f) return 1
    return unitOrder(x) - unitOrder(y)
  }
  return a.length - b.length
}

export function parentOf (path: string): string {
  const i = path.lastIndexOf('/')
  return i < 0 ? '' : path.slice(0, i)
}
