import { lstatSync, readdirSync, readlinkSync } from 'node:fs'
import type { Stats } from 'node:fs'
import { lgetxattrs } from '@strata/sys'
import { InputResolveError } from './errors.ts'

/** An entry of the merged view: its stat and the host path it is read from. */
export interface ViewEntry {
  /** Absolute path inside the view, normalized. */
  path: string
  /** Host path of the top-most copy. */
  hostPath: string
  stats: Stats
}

const OPAQUE_XATTRS = new Set(['trusted.overlay.opaque', 'user.overlay.opaque'])
const MAX_SYMLINK_HOPS = 40

interface DirNode {
  /** Host paths of this directory in each layer that contributes to it, top first. */
  dirs: string[]
}

/**
 * Reads the filesystem a step will see without mounting it: the layer dirs (OverlayFS
 * upper-dir form, newest first) over the base, merged the way OverlayFS merges them
 * with redirect_dir and metacopy off (the runner mounts them so): the top-most entry
 * wins, a 0/0 character device is a whiteout, a directory with the overlay opaque
 * xattr hides the same directory in the layers below, and a non-directory hides
 * everything below it. Symlinks resolve inside the view, as under chroot.
 */
export class LayeredView {
  readonly #roots: string[]
  readonly #base: string
  readonly #baseDev: number
  readonly #dirs = new Map<string, DirNode | null>()

  constructor (layers: readonly string[], base: string) {
    this.#base = base === '/' ? '' : base.replace(/\/+$/, '')
    this.#roots = [...new Set(layers.map((l) => l.replace(/\/+$/, ''))), this.#base]
    this.#baseDev = lstatSync(this.#base === '' ? '/' : this.#base).dev
  }

  /** The entry at `path` itself (a final symlink is not followed), or undefined. Intermediate symlinks are followed. */
  lstat (path: string): ViewEntry | undefined {
    const r = this.#resolve(path, false)
    return r
  }

  /** The entry `path` names after following every symlink, or undefined. */
  stat (path: string): ViewEntry | undefined {
    return this.#resolve(path, true)
  }

  /** Names in the merged directory at `path` (already resolved, a directory), sorted. */
  readdir (path: string): string[] {
    const node = this.#dir(split(path))
    if (node === null) return []
    const names = new Set<string>()
    const hidden = new Set<string>()
    for (const d of node.dirs) {
      let list: string[]
      try {
        list = readdirSync(d === '' ? '/' : d)
      } catch {
        continue
      }
      for (const n of list) {
        if (names.has(n) || hidden.has(n)) continue
        const st = lstatSafe(`${d}/${n}`)
        if (st === undefined) continue
        if (isWhiteout(st) && d !== this.#base) hidden.add(n)
        else names.add(n)
      }
    }
    return [...names].sort()
  }

  /** The top-most copy of the entry named by `parts` under an already-resolved directory; no symlink following. */
  #entry (parts: readonly string[]): { hostPath: string, stats: Stats } | undefined {
    if (parts.length === 0) {
      const top = this.#roots[0]!
      return { hostPath: top === '' ? '/' : top, stats: lstatSync(top === '' ? '/' : top) }
    }
    const parent = this.#dir(parts.slice(0, -1))
    if (parent === null) return undefined
    const name = parts[parts.length - 1]!
    for (const d of parent.dirs) {
      const hostPath = `${d}/${name}`
      const st = lstatSafe(hostPath)
      if (st === undefined) continue
      if (isWhiteout(st) && d !== this.#base) return undefined
      return { hostPath, stats: st }
    }
    return undefined
  }

  /** The layers contributing to the directory `parts` (each component a real directory, no symlinks), or null. */
  #dir (parts: readonly string[]): DirNode | null {
    const key = parts.join('/')
    const cached = this.#dirs.get(key)
    if (cached !== undefined) return cached
    let node: DirNode | null
    if (parts.length === 0) {
      node = { dirs: [...this.#roots] }
    } else {
      const parent = this.#dir(parts.slice(0, -1))
      node = null
      if (parent !== null) {
        const name = parts[parts.length - 1]!
        const dirs: string[] = []
        let exists = false
        for (const d of parent.dirs) {
          const p = `${d}/${name}`
          const st = lstatSafe(p)
          if (st === undefined) continue
          if (!st.isDirectory()) break // a whiteout or a non-directory hides everything below
          exists = true
          // OverlayFS sees the base's own filesystem only: what is mounted on it
          // (/proc, /sys, a separate /home, ...) is an empty directory in the view.
          if (d === this.#base && st.dev !== this.#baseDev) break
          dirs.push(p)
          if (d !== this.#base && isOpaque(p)) break
        }
        if (exists) node = { dirs }
      }
    }
    this.#dirs.set(key, node)
    return node
  }

  #resolve (path: string, followLast: boolean): ViewEntry | undefined {
    const todo = split(path)
    const done: string[] = []
    let hops = 0
    let last: { hostPath: string, stats: Stats } | undefined = this.#entry([])
    while (todo.length > 0) {
      const c = todo.shift()!
      if (c === '..') {
        done.pop()
        last = this.#entry(done)
        continue
      }
      const candidate = [...done, c]
      const e = this.#entry(candidate)
      if (e === undefined) return undefined
      if (e.stats.isSymbolicLink() && (todo.length > 0 || followLast)) {
        if (++hops > MAX_SYMLINK_HOPS) throw new InputResolveError(path, 'too many levels of symbolic links')
        const target = readlinkSync(e.hostPath)
        if (target.startsWith('/')) done.length = 0
        todo.unshift(...split(target))
        last = this.#entry(done)
        continue
      }
      if (todo.length > 0 && !e.stats.isDirectory()) return undefined
      done.push(c)
      last = e
    }
    if (last === undefined) return undefined
    return { path: `/${done.join('/')}`, hostPath: last.hostPath, stats: last.stats }
  }
}

/** Path components, without empty and "." components; ".." is kept for the resolver. */
export function split (path: string): string[] {
  return path.split('/').filter((c) => c !== '' && c !== '.')
}

function lstatSafe (p: string): Stats | undefined {
  try {
    return lstatSync(p === '' ? '/' : p)
  } catch {
    return undefined
  }
}

function isWhiteout (st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0
}

function isOpaque (p: string): boolean {
  try {
    for (const [name, value] of lgetxattrs(p)) {
      if (OPAQUE_XATTRS.has(name) && value.length === 1 && value[0] === 0x79 /* y */) return true
    }
  } catch {
    // no xattr support on this filesystem: nothing is opaque
  }
  return false
}
