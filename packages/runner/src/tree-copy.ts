import { chmodSync, constants, copyFileSync, lchownSync, lstatSync, mkdirSync, readlinkSync, symlinkSync } from 'node:fs'
import { posix } from 'node:path'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { lutimens } from '@strata/sys'
import type { LayeredView } from './view.ts'

/** One entry of a tree read from a LayeredView: where it goes (relative) and where its top-most copy is. */
export interface PlannedEntry {
  /** Relative to the tree's root; '' for the root itself. */
  rel: string
  kind: 'file' | 'dir' | 'symlink'
  /** Host path of the top-most copy in the layer dirs (or the base). */
  hostPath: string
}

/** A tree read from a view, parents before children. */
export interface CopyPlan {
  entries: PlannedEntry[]
  /** Devices, FIFOs and sockets: never copied. */
  skipped: string[]
}

export interface PlanOptions {
  signal?: AbortSignal | undefined
  /** Why a symlink (view path, target) may not be copied; undefined when it may. */
  checkLink?: (link: string, target: string) => string | undefined
  /** Makes the error for a refused link. */
  unsafe?: (path: string, why: string) => Error
}

/** Entries between two turns of the event loop (and signal checks). */
const BATCH = 256

/** Reads the tree at `root` in `view` (not following symlinks) into a plan. */
export async function planTree (view: LayeredView, root: string, opts: PlanOptions = {}): Promise<CopyPlan> {
  const entries: PlannedEntry[] = []
  const skipped: string[] = []
  const stack: Array<{ path: string, rel: string }> = [{ path: root, rel: '' }]
  let n = 0
  while (stack.length > 0) {
    if (++n % BATCH === 0) {
      await nextTurn()
      opts.signal?.throwIfAborted()
    }
    const { path, rel } = stack.pop()!
    const e = view.lstat(path)
    if (e === undefined) continue
    const st = e.stats
    if (st.isDirectory()) {
      entries.push({ rel, kind: 'dir', hostPath: e.hostPath })
      // Reversed so that the stack pops names in sorted order.
      for (const name of view.readdir(e.path).reverse()) stack.push({ path: `${e.path === '/' ? '' : e.path}/${name}`, rel: rel === '' ? name : `${rel}/${name}` })
    } else if (st.isSymbolicLink()) {
      const target = readlinkSync(e.hostPath)
      const problem = opts.checkLink?.(path, target)
      if (problem !== undefined) throw opts.unsafe?.(path, problem) ?? new Error(problem)
      entries.push({ rel, kind: 'symlink', hostPath: e.hostPath })
    } else if (st.isFile()) {
      entries.push({ rel, kind: 'file', hostPath: e.hostPath })
    } else {
      skipped.push(rel)
    }
  }
  return { entries, skipped }
}

export interface CopyOptions {
  signal?: AbortSignal | undefined
  /** Owner of every entry written; default the source's. */
  owner?: { uid: number, gid: number }
  /** Drop setuid/setgid bits (files going into a checkout a CI job uploads or runs). */
  stripSetid?: boolean
  /** `dest` exists already (an empty dir): leave its own mode, owner and times alone. */
  keepRoot?: boolean
}

/**
 * Writes `plan` at `dest` (which must not exist unless keepRoot): contents, modes
 * and times (nanoseconds) as in the source; directories' modes and times are set
 * after their contents. Nothing is followed: a symlink is written as a symlink.
 */
export async function copyTree (plan: CopyPlan, dest: string, opts: CopyOptions = {}): Promise<{ entries: number, bytes: number }> {
  const dirs: Array<{ to: string, from: string }> = []
  let bytes = 0
  let n = 0
  for (const e of plan.entries) {
    if (++n % BATCH === 0) {
      await nextTurn()
      opts.signal?.throwIfAborted()
    }
    const to = e.rel === '' ? dest : posix.join(dest, e.rel)
    if (e.kind === 'dir') {
      if (e.rel === '' && opts.keepRoot === true) continue
      mkdirSync(to, { mode: 0o700 })
      dirs.push({ to, from: e.hostPath })
      continue
    }
    const st = lstatSync(e.hostPath, { bigint: true })
    if (e.kind === 'symlink') {
      symlinkSync(readlinkSync(e.hostPath), to)
      lchownSync(to, opts.owner?.uid ?? Number(st.uid), opts.owner?.gid ?? Number(st.gid))
    } else {
      copyFileSync(e.hostPath, to, constants.COPYFILE_FICLONE)
      lchownSync(to, opts.owner?.uid ?? Number(st.uid), opts.owner?.gid ?? Number(st.gid))
      chmodSync(to, mode(Number(st.mode), opts))
      bytes += Number(st.size)
    }
    setTimes(to, st)
  }
  // Children first: writing into a directory changes its mtime.
  for (const { to, from } of dirs.reverse()) {
    const st = lstatSync(from, { bigint: true })
    lchownSync(to, opts.owner?.uid ?? Number(st.uid), opts.owner?.gid ?? Number(st.gid))
    chmodSync(to, mode(Number(st.mode), opts))
    setTimes(to, st)
  }
  return { entries: plan.entries.length - (opts.keepRoot === true ? 1 : 0), bytes }
}

function mode (m: number, opts: CopyOptions): number {
  // chown clears setuid/setgid, so the mode is set after it; only the permission bits go through chmod.
  return m & (opts.stripSetid === true ? 0o1777 : 0o7777)
}

function setTimes (path: string, st: { atimeNs: bigint, mtimeNs: bigint }): void {
  const split = (ns: bigint): [number, number] => [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)]
  lutimens(path, split(st.atimeNs), split(st.mtimeNs))
}
