import { chmodSync, constants, copyFileSync, lchownSync, linkSync, lstatSync, mkdirSync, readdirSync, renameSync, symlinkSync, unlinkSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { lsetxattr, lutimens, mknod, S_IFBLK, S_IFCHR, S_IFIFO } from '@strata/sys'
import { parentOf } from './entry.ts'
import type { Entry } from './entry.ts'
import { ChunkerError } from './errors.ts'
import type { OpaqueNamespace } from './xattrs.ts'

/**
 * What the manifest leaves out of a tree, reported by packTree. With `normalize`
 * the tree was changed to match: `socket` removed, `setuid` bits cleared,
 * `xattr` removed, `link` (a hardlinked symlink, FIFO or device) made a copy of its own.
 */
export interface Drop {
  path: string
  what: 'socket' | 'setuid' | 'xattr' | 'link'
  /** The xattr's name. */
  name?: string
  reason: string
}

/** What an entry of the manifest looks like, for the fixes that rebuild one. */
export type Shape = Pick<Entry, 'type' | 'mode' | 'uid' | 'gid' | 'mtime' | 'xattrs' | 'opaque' | 'target' | 'rdev'>

/** One change that makes a tree hold exactly what its manifest records; paths are the manifest's ('' is the root). */
export type Fix =
  | { kind: 'remove', path: string }
  | { kind: 'chmod', path: string, mode: number }
  /** Attributes that cannot be taken off in place (an xattr; node has no removexattr): a new inode replaces the old one. */
  | { kind: 'recreate', path: string, shape: Shape }
  /** A later path of a hardlinked file whose first path was recreated. */
  | { kind: 'relink', path: string, to: string }

function splitNs (ns: bigint): [number, number] {
  return [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)]
}

/**
 * Applies `fixes` (in manifest order) to the tree at `dir`, then puts back the
 * times of every directory they touched, which the manifest recorded before.
 */
export function applyFixes (dir: string, fixes: readonly Fix[], ns: OpaqueNamespace): void {
  const abs = (rel: string): string => (rel === '' ? dir : `${dir}/${rel}`)
  const times = new Map<string, [[number, number], [number, number]]>()
  const note = (rel: string): void => {
    if (times.has(rel)) return
    const st = lstatSync(abs(rel), { bigint: true })
    times.set(rel, [splitNs(st.atimeNs), splitNs(st.mtimeNs)])
  }
  for (const f of fixes) {
    if (f.kind === 'chmod') continue
    if (f.path !== '') note(parentOf(f.path))
    if (f.kind === 'recreate' && f.shape.type === 'dir') note(f.path)
  }
  for (const f of fixes) {
    try {
      switch (f.kind) {
        case 'remove':
          unlinkSync(abs(f.path))
          break
        case 'chmod':
          chmodSync(abs(f.path), f.mode)
          break
        case 'recreate':
          recreate(abs(f.path), f.shape, ns)
          break
        case 'relink': {
          const tmp = tempName(abs(f.path))
          linkSync(abs(f.to), tmp)
          renameSync(tmp, abs(f.path))
        }
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EIO'
      throw new ChunkerError(code, `cannot normalize the tree (${f.kind}): ${(err as Error).message}`, { path: f.path, cause: err })
    }
  }
  for (const [rel, [atime, mtime]] of times) lutimens(abs(rel), atime, mtime)
}

function tempName (abs: string): string {
  const slash = abs.lastIndexOf('/')
  return `${abs.slice(0, slash)}/.strata-normalize-${randomBytes(8).toString('hex')}`
}

/** Replaces the entry at `abs` with a new inode that has exactly `shape`'s attributes. */
function recreate (abs: string, shape: Shape, ns: OpaqueNamespace): void {
  const tmp = tempName(abs)
  switch (shape.type) {
    case 'dir':
      mkdirSync(tmp, { mode: 0o700 })
      for (const name of readdirSync(abs)) renameSync(`${abs}/${name}`, `${tmp}/${name}`)
      break
    case 'file':
      copyFileSync(abs, tmp, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE)
      break
    case 'symlink':
      symlinkSync(shape.target!, tmp)
      break
    case 'fifo':
      mknod(tmp, S_IFIFO | 0o600)
      break
    case 'whiteout':
      mknod(tmp, S_IFCHR, 0, 0)
      break
    case 'chardev':
    case 'blockdev':
      mknod(tmp, (shape.type === 'chardev' ? S_IFCHR : S_IFBLK) | 0o600, shape.rdev![0], shape.rdev![1])
      break
    case 'hardlink':
      throw new TypeError('a hardlink is relinked, not recreated')
  }
  const symlink = shape.type === 'symlink'
  if ((process.geteuid?.() ?? 0) === 0) lchownSync(tmp, shape.uid, shape.gid)
  // Setting a user.* xattr needs write permission; the mode goes on last.
  if (!symlink) chmodSync(tmp, shape.type === 'dir' ? 0o700 : 0o600)
  for (const [n, v] of shape.xattrs ?? []) lsetxattr(tmp, n, v)
  if (shape.opaque === true) lsetxattr(tmp, `${ns}.overlay.opaque`, Uint8Array.of(0x79))
  if (!symlink) chmodSync(tmp, shape.mode)
  lutimens(tmp, shape.mtime, shape.mtime)
  renameSync(tmp, abs)
}
