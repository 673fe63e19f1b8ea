// Scratch space that a benchmark removes however it ends: normally (the caller's
// finally), by an exception, or by SIGINT / SIGTERM / SIGHUP, which would otherwise
// end the process without running any finally block.

import { rmSync } from 'node:fs'

const paths = new Set<string>()
const hooks = new Set<() => void>()
let installed = false

function removeAll (): void {
  for (const hook of hooks) {
    try {
      hook()
    } catch {
      // Best effort, as below.
    }
  }
  for (const p of paths) {
    try {
      rmSync(p, { recursive: true, force: true })
    } catch {
      // Best effort: a signal handler has nobody to report to.
    }
  }
  paths.clear()
}

function install (): void {
  if (!installed) {
    installed = true
    process.on('exit', removeAll)
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.on(sig, () => {
        removeAll()
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1))
      })
    }
  }
}

/** Removes `path` on exit or on a terminating signal unless released first. */
export function removeOnExit (path: string): string {
  install()
  paths.add(path)
  return path
}

/**
 * Runs `hook` (synchronously) before the paths are removed on exit or signal, e.g.
 * to kill a child still writing into them. Returns a function that unregisters it.
 */
export function beforeRemoval (hook: () => void): () => void {
  install()
  hooks.add(hook)
  return () => hooks.delete(hook)
}

/** Removes `path` now and forgets it. */
export function removeNow (path: string): void {
  rmSync(path, { recursive: true, force: true })
  paths.delete(path)
}

/** Keeps `path` (it became a result, e.g. a completed fixture). */
export function release (path: string): void {
  paths.delete(path)
}
