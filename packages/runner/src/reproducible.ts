import { lstatSync, lutimesSync, readdirSync } from 'node:fs'
import type { RunnerContext } from './context.ts'
import type { StepSpec } from './pipeline.ts'

/** 1980-01-01T00:00:00Z: the earliest time ZIP (and so wheels and jars) can record. */
export const DEFAULT_SOURCE_DATE_EPOCH = 315_532_800

/**
 * The SOURCE_DATE_EPOCH of a `reproducible` step: the value its own env declares when
 * that is a whole number of seconds, else a fixed date. Never the caller's clock or
 * commit time, which would make every run's layer another one. Undefined for other steps.
 */
export function sourceDateEpoch (ctx: Pick<RunnerContext, 'env'>, step: StepSpec): number | undefined {
  if (step.reproducible !== true) return undefined
  const decl = step.env.find((e) => e.name === 'SOURCE_DATE_EPOCH')
  const v = decl === undefined ? undefined : decl.value ?? ctx.env.SOURCE_DATE_EPOCH
  return v !== undefined && /^\d{1,12}$/.test(v) ? Number(v) : DEFAULT_SOURCE_DATE_EPOCH
}

/**
 * Sets every mtime in `dir` later than `epoch` to it, as BuildKit's rewrite-timestamp
 * does: what the step wrote no longer records when it ran. Links are not followed;
 * a dir is done after its entries. Returns how many entries were changed.
 */
export function clampMtimes (dir: string, epoch: number): number {
  let changed = 0
  const walk = (path: string): void => {
    const st = lstatSync(path)
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(`${path}/${name}`)
    if (st.mtimeMs > epoch * 1000) {
      lutimesSync(path, st.atime, epoch)
      changed++
    }
  }
  walk(dir)
  return changed
}
