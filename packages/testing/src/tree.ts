import { chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync, linkSync, chmodSync, openSync, closeSync, ftruncateSync, writeSync, statSync, utimesSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { lgetxattrs, lsetxattr, lutimens, mknod, S_IFCHR, S_IFIFO } from '@strata/sys'

/** One node of a layer test tree (buildTree), built from a plain object. */
export type Node =
  | string | Uint8Array
  | { file: string | Uint8Array, mode?: number, uid?: number, gid?: number, mtime?: [number, number], xattrs?: Record<string, string> }
  | { dir: Tree, mode?: number, opaque?: boolean, mtime?: [number, number], xattrs?: Record<string, string> }
  | { symlink: string }
  | { hardlink: string }
  | { whiteout: true }
  | { fifo: true }
  | { sparse: number, data: Array<[number, string]> }
export interface Tree { [name: string]: Node }

/** Builds `tree` at `root` with everything a layer carries: modes, owners, times, xattrs, links, whiteouts, holes. */
export function buildTree (root: string, tree: Tree): void {
  mkdirSync(root, { recursive: true })
  const dirTimes: Array<[string, [number, number]]> = []
  const build = (dir: string, t: Tree): void => {
    for (const [name, node] of Object.entries(t)) {
      const p = join(dir, name)
      if (typeof node === 'string' || node instanceof Uint8Array) {
        writeFileSync(p, node)
      } else if ('file' in node) {
        writeFileSync(p, node.file)
        if (node.uid !== undefined) chownSync(p, node.uid, node.gid ?? node.uid)
        if (node.mode !== undefined) chmodSync(p, node.mode)
        for (const [k, v] of Object.entries(node.xattrs ?? {})) lsetxattr(p, k, Buffer.from(v))
        if (node.mtime !== undefined) lutimens(p, node.mtime, node.mtime)
      } else if ('dir' in node) {
        mkdirSync(p)
        build(p, node.dir)
        if (node.opaque === true) lsetxattr(p, 'trusted.overlay.opaque', Buffer.from('y'))
        for (const [k, v] of Object.entries(node.xattrs ?? {})) lsetxattr(p, k, Buffer.from(v))
        if (node.mode !== undefined) chmodSync(p, node.mode)
        if (node.mtime !== undefined) dirTimes.push([p, node.mtime])
      } else if ('symlink' in node) {
        symlinkSync(node.symlink, p)
      } else if ('hardlink' in node) {
        linkSync(join(root, node.hardlink), p)
      } else if ('whiteout' in node) {
        mknod(p, S_IFCHR, 0, 0)
      } else if ('fifo' in node) {
        mknod(p, S_IFIFO | 0o644)
      } else if ('sparse' in node) {
        const fd = openSync(p, 'w')
        ftruncateSync(fd, node.sparse)
        for (const [off, text] of node.data) writeSync(fd, text, off)
        closeSync(fd)
      }
    }
  }
  build(root, tree)
  for (const [p, t] of dirTimes.reverse()) lutimens(p, t, t)
}

/**
 * Everything a layer must carry about a tree, as comparable JSON: type, mode,
 * owner, mtime (ns), xattrs, content digest, link target, device numbers, and
 * which paths share an inode.
 */
export function describeTree (root: string): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  const inodes = new Map<bigint, string>()
  const walk = (rel: string): void => {
    const abs = rel === '' ? root : join(root, rel)
    const st = lstatSync(abs, { bigint: true })
    const d: Record<string, unknown> = {
      mode: (st.mode & 0o177777n).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      xattrs: lgetxattrs(abs).map(([k, v]) => `${k}=${v.toString('hex')}`)
    }
    if (!st.isDirectory()) d.mtime = st.mtimeNs.toString()
    else if (rel !== '') d.mtime = st.mtimeNs.toString()
    if (st.isFile()) {
      d.sha = createHash('sha256').update(readFileSync(abs)).digest('hex')
      d.size = Number(st.size)
      if (st.nlink > 1n) {
        d.inode = inodes.get(st.ino) ?? rel
        inodes.set(st.ino, d.inode as string)
      }
    }
    if (st.isSymbolicLink()) d.target = readlinkSync(abs)
    if (st.isCharacterDevice() || st.isBlockDevice()) d.rdev = Number(st.rdev)
    out[rel === '' ? '.' : rel] = d
    if (st.isDirectory()) for (const name of readdirSync(abs).sort()) walk(rel === '' ? name : `${rel}/${name}`)
  }
  walk('')
  return out
}

/** A plain tree (writeTree): a string or bytes is a file, `{ symlink }` a link, any other object a directory. */
export interface PlainTree { [name: string]: string | Uint8Array | { symlink: string } | PlainTree }

/**
 * Writes `tree` under `dir`. With `mtime` (seconds), every file and directory gets
 * that time, so the same tree gives the same layer on every node and in every run.
 */
export function writeTree (dir: string, tree: PlainTree, opts: { mtime?: number } = {}): void {
  mkdirSync(dir, { recursive: true })
  for (const [name, v] of Object.entries(tree)) {
    const p = `${dir}/${name}`
    if (typeof v === 'string' || v instanceof Uint8Array) {
      writeFileSync(p, v)
      if (opts.mtime !== undefined) utimesSync(p, opts.mtime, opts.mtime)
    } else if ('symlink' in v && typeof v.symlink === 'string') {
      symlinkSync(v.symlink, p)
    } else {
      writeTree(p, v as PlainTree, opts)
    }
  }
  if (opts.mtime !== undefined) utimesSync(dir, opts.mtime, opts.mtime)
}

/** Path -> sha256 of every regular file (and '<dir>' for dirs) under `dir`. */
export function digestTree (dir: string, prefix = ''): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of readdirSync(dir).sort()) {
    const p = `${dir}/${name}`
    const rel = `${prefix}${name}`
    const st = statSync(p)
    if (st.isDirectory()) {
      out[rel] = '<dir>'
      Object.assign(out, digestTree(p, `${rel}/`))
    } else {
      out[rel] = createHash('sha256').update(readFileSync(p)).digest('hex')
    }
  }
  return out
}
