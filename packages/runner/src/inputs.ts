import { createReadStream, readlinkSync } from 'node:fs'
import { matchesGlob } from 'node:path'
import type { Stats } from 'node:fs'
import { InputLimitError, InputNotFoundError } from './errors.ts'
import { inputDigest } from './key.ts'
import type { DigestKey } from './key.ts'
import { split } from './view.ts'
import type { LayeredView, ViewEntry } from './view.ts'

/** One input as it enters the key descriptor. */
export interface InputEntry {
  /** Absolute path inside the step's view. */
  path: string
  type: 'file' | 'dir' | 'symlink' | 'other'
  /** Regular files: whether any execute bit is set (the only mode bit in the key, as in git). */
  exec?: boolean
  /** Regular files: inputDigest() of the content, keyed by the salts. */
  digest?: Uint8Array
  /** Symlinks: the link text. */
  target?: string
}

export interface InputLimits {
  /** Most input entries per step. Default 100 000. */
  maxFiles?: number
  /** Most bytes hashed per step. Default 8 GiB. */
  maxBytes?: number
}

const DEFAULT_MAX_FILES = 100_000
const DEFAULT_MAX_BYTES = 8 * 1024 ** 3

export function isGlob (pattern: string): boolean {
  return /[*?[\]{}]/.test(pattern)
}

/**
 * The step's declared inputs as they look in its view, sorted by path:
 * - a plain path is followed through symlinks (as `cat path` would) and must exist;
 *   a directory stands for itself and everything below it;
 * - a glob matches entries below its literal prefix without following symlinks
 *   (a matched symlink enters the key as its link text); matching nothing is allowed
 *   and reported through `onUnmatched`.
 * Only regular files are read; devices, FIFOs and sockets enter the key by type only.
 */
export async function collectInputs (step: string, patterns: readonly string[], view: LayeredView, limits: InputLimits = {}, opts: { signal?: AbortSignal, digestKey?: DigestKey, onUnmatched?: (glob: string) => void } = {}): Promise<InputEntry[]> {
  const maxFiles = limits.maxFiles ?? DEFAULT_MAX_FILES
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES
  const found = new Map<string, ViewEntry>()
  let visited = 0
  const add = (e: ViewEntry): void => {
    if (found.has(e.path)) return
    if (found.size >= maxFiles) throw new InputLimitError(step, 'files', maxFiles)
    found.set(e.path, e)
  }
  const walk = (dir: ViewEntry, onEntry: (e: ViewEntry) => void): void => {
    for (const name of view.readdir(dir.path)) {
      opts.signal?.throwIfAborted()
      // Walking is bounded too: a glob over a huge tree that matches little still costs.
      if (++visited > maxFiles * 10) throw new InputLimitError(step, 'walked', maxFiles * 10)
      const child = view.lstat(`${dir.path}/${name}`)
      if (child === undefined) continue
      onEntry(child)
      if (child.stats.isDirectory()) walk(child, onEntry)
    }
  }

  for (const pattern of patterns) {
    if (!isGlob(pattern)) {
      const e = view.stat(pattern)
      if (e === undefined) throw new InputNotFoundError(step, pattern)
      // Keep the path the user declared: the step reads it by that name.
      const named = { ...e, path: normalize(pattern) }
      add(named)
      if (e.stats.isDirectory()) {
        walk(e, (c) => add({ ...c, path: named.path + c.path.slice(e.path.length) }))
      }
      continue
    }
    const parts = split(pattern)
    const literal: string[] = []
    for (const p of parts) {
      if (isGlob(p)) break
      literal.push(p)
    }
    const prefix = `/${literal.join('/')}`
    const start = view.stat(prefix)
    let matched = false
    if (start !== undefined && start.stats.isDirectory()) {
      const glob = normalize(pattern)
      walk(start, (c) => {
        const path = (prefix === '/' ? '' : prefix) + c.path.slice(start.path === '/' ? 0 : start.path.length)
        if (matchesGlob(path, glob)) {
          matched = true
          add({ ...c, path })
        }
      })
    }
    // Allowed, but never silent: a mistyped glob would leave its files out of the key.
    if (!matched) opts.onUnmatched?.(pattern)
  }

  const sorted = [...found.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  let bytes = 0
  const out: InputEntry[] = []
  for (const e of sorted) {
    opts.signal?.throwIfAborted()
    const st = e.stats
    if (st.isFile()) {
      bytes += st.size
      if (bytes > maxBytes) throw new InputLimitError(step, 'bytes', maxBytes)
      out.push({ path: e.path, type: 'file', exec: (st.mode & 0o111) !== 0, digest: await digestFile(e.hostPath, st, opts) })
    } else if (st.isDirectory()) {
      out.push({ path: e.path, type: 'dir' })
    } else if (st.isSymbolicLink()) {
      out.push({ path: e.path, type: 'symlink', target: readlinkSync(e.hostPath) })
    } else {
      out.push({ path: e.path, type: 'other' })
    }
  }
  return out
}

function normalize (p: string): string {
  const parts: string[] = []
  for (const c of split(p)) {
    if (c === '..') parts.pop()
    else parts.push(c)
  }
  return `/${parts.join('/')}`
}

async function digestFile (path: string, st: Stats, opts: { signal?: AbortSignal, digestKey?: DigestKey }): Promise<Uint8Array> {
  const h = inputDigest(opts.digestKey)
  if (st.size > 0) for await (const chunk of createReadStream(path, { signal: opts.signal, highWaterMark: 1 << 20 })) h.update(chunk as Buffer)
  return new Uint8Array(h.digest())
}
