import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { resolve } from 'node:path'
import type { Chain } from './chain.ts'
import type { RunnerContext } from './context.ts'
import { ExportDirError } from './errors.ts'
import type { Emit } from './events.ts'
import { copyTree, planTree } from './tree-copy.ts'
import { LayeredView } from './view.ts'

/** Makes `dir` absolute and checks it can take an export: absent (it is created) or an empty directory. */
export async function checkExportDir (dir: string): Promise<string> {
  const abs = resolve(dir)
  let names: string[]
  try {
    if (!statSync(abs).isDirectory()) throw new ExportDirError(abs, 'it is not a directory')
    names = readdirSync(abs)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err instanceof ExportDirError ? err : new ExportDirError(abs, (err as Error).message, { cause: err })
    try {
      await mkdir(abs, { recursive: true })
    } catch (e) {
      throw new ExportDirError(abs, (e as Error).message, { cause: e })
    }
    return abs
  }
  if (names.length > 0) throw new ExportDirError(abs, 'it is not empty (an export holds exactly the changes of the run)')
  return abs
}

/**
 * Writes the changes of `layers` (newest first) merged as OverlayFS merges them,
 * whiteouts and opaque dirs applied, into the empty dir `dir`: what the steps
 * added or changed over the base, without the base. Owners, modes and times are kept.
 */
export async function exportLayers (layers: readonly string[], dir: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<{ entries: number, bytes: number }> {
  // The layers alone: an empty dir stands in for the base.
  const empty = mkdtempSync(`${tmpdir()}/strata-export-base-`)
  try {
    const view = new LayeredView(layers, empty)
    const plan = await planTree(view, '/', opts)
    return await copyTree(plan, dir, { ...opts, keepRoot: true })
  } finally {
    rmSync(empty, { recursive: true, force: true })
  }
}

/** After the last step of a run: writes its changes (every layer of the chain) into `dir`, and says so. */
export async function exportRun (ctx: RunnerContext, chain: Chain, last: string, dir: string, opts: { signal?: AbortSignal | undefined, onEvent?: Emit | undefined }): Promise<void> {
  const t0 = performance.now()
  const done = await exportLayers(chain.layers, dir, { signal: opts.signal })
  ctx.log.info({ dir, entries: done.entries, bytes: done.bytes }, 'exported the run\'s changes')
  opts.onEvent?.({ type: 'exported', step: last, dir, entries: done.entries, bytes: done.bytes, durationMs: performance.now() - t0 })
}
