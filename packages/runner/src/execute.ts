import { closeSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { baseRoot } from './base.ts'
import type { RunnerContext, StepContext } from './context.ts'
import { StepCancelledError, StepFailedError, StepTimeoutError } from './errors.ts'
import { cacheOff } from './hold.ts'
import type { Described } from './describe.ts'
import { runSandbox } from './sandbox.ts'
import type { SandboxWorkspace } from './sandbox.ts'
import { isDiskFull, makeScratch, mountSpill } from './scratch.ts'
import type { Scratch } from './scratch.ts'
import { BASE_ENV, checkStrataEnv, envObject, readStrataEnv } from './strata-env.ts'
import { absorbWorkspace, prepareWorkspace } from './workspace.ts'
import { sourceDateEpoch } from './reproducible.ts'
import { outputView, planOutputs } from './outputs.ts'

/** A step's scratch dir while it runs; `kept` once its upper dir stays mounted under the later steps of the run. */
export interface Run extends Scratch {
  kept: boolean
  /** The checkout's mount, laid out in the scratch dir (prepareWorkspace). */
  workspace?: SandboxWorkspace
}

/** What a step that exited 0 left: its own $STRATA_ENV lines. */
export interface Ran {
  ownEnv: string[]
  ranMs: number
}

/**
 * A scratch dir for the step, with its workspace mount laid out: on the data dir's
 * filesystem while caching is on; on a spill tmpfs once that filesystem is full.
 */
export async function openRun (ctx: RunnerContext, s: StepContext, described: Described): Promise<Run> {
  const { hold, chain } = s
  const base = baseRoot(chain.base)
  const ws = chain.workspace
  const scan = described.scan
  const make = async (root: string): Promise<Run> => {
    const run: Run = { ...await makeScratch(root, chain.layers, base), kept: false }
    if (ws === undefined || scan === undefined) return run
    try {
      run.workspace = { path: ws.path, lowerOption: await prepareWorkspace(run.runDir, ws, chain.layers, scan.hidden) }
      return run
    } catch (err) {
      await closeRun(run)
      throw err
    }
  }
  if (!hold.cacheOff) {
    try {
      return await make(`${ctx.dataDir}/runner/run`)
    } catch (err) {
      if (!isDiskFull(err)) throw err
      cacheOff(ctx, hold, s.step.name, err, s.emit)
    }
  }
  hold.spill ??= await mountSpill(ctx.log)
  return await make(hold.spill.dir)
}

/** Removes the scratch dir, unless the run keeps it. */
export async function closeRun (run: Run): Promise<void> {
  if (run.kept) return
  closeSync(run.lockFd)
  await rm(run.runDir, { recursive: true, force: true })
}

/** Runs the step in the sandbox; a non-zero exit, a timeout or a cancel is the step's error, reported as `failed`. */
export async function execute (ctx: RunnerContext, s: StepContext, run: Run, key: string): Promise<Ran> {
  const { step, chain, emit } = s
  const env: Record<string, string> = envObject(chain.envLines, BASE_ENV)
  for (const e of step.env) {
    const v = e.value ?? ctx.env[e.name]
    if (v !== undefined) env[e.name] = v
  }
  const epoch = sourceDateEpoch(ctx, step)
  if (epoch !== undefined) env.SOURCE_DATE_EPOCH = String(epoch)
  // Secrets reach the step's environment only: not the descriptor, the record or a log line.
  for (const name of step.secrets ?? []) {
    const v = ctx.env[name]
    if (v !== undefined) env[name] = v
    else ctx.log.info({ step: step.name, secret: name }, 'a secret the step declares is not set')
  }
  const ranAt = performance.now()
  const result = await runSandbox({
    name: step.name,
    runDir: run.runDir,
    lowers: chain.layers,
    base: baseRoot(chain.base),
    mask: chain.base.kind === 'host' ? ctx.dataDir : undefined,
    hide: ctx.sandbox.hide,
    run: step.run,
    tmpSize: step.tmpSize ?? ctx.sandbox.tmpSize,
    shared: ctx.sandbox.shared,
    cwd: step.cwd,
    ...(run.workspace !== undefined ? { workspace: run.workspace } : {}),
    env,
    output: s.output,
    timeoutMs: step.timeoutMs,
    killGraceMs: ctx.killGraceMs,
    signal: s.signal,
    log: ctx.log
  }, run.lowerOption)
  const ranMs = performance.now() - ranAt
  if (result.killed !== undefined || result.exitCode !== 0) {
    const err = result.killed === 'timeout'
      ? new StepTimeoutError(step.name, step.timeoutMs ?? 0)
      : result.killed === 'cancel'
        ? new StepCancelledError(step.name, { cause: s.signal?.reason })
        : new StepFailedError(step.name, result.exitCode ?? 128, result.signal)
    emit({ type: 'failed', step: step.name, key, reason: result.killed ?? 'exit', exitCode: result.exitCode, signal: result.signal, durationMs: ranMs, error: err })
    throw err
  }
  const ownEnv = await readStrataEnv(step.name, `${run.runDir}/env`)
  // The steps above get this environment: one that exec would refuse is this step's failure, and nothing is committed.
  checkStrataEnv(step.name, [...chain.envLines, ...ownEnv], BASE_ENV)
  // What the step changed in the workspace is part of its layer, at the workspace path.
  if (run.workspace !== undefined) await absorbWorkspace(run.runDir, run.workspace.path, chain.layers, baseRoot(chain.base))
  // A missing output is the step's failure, found before anything is committed.
  if (step.outputs !== undefined && s.places !== undefined) await planOutputs(step.name, outputView(s.places, [`${run.runDir}/u`, ...chain.layers], baseRoot(chain.base)), s.places, step.outputs, s)
  emit({ type: 'ran', step: step.name, key, exitCode: 0, durationMs: ranMs })
  return { ownEnv, ranMs }
}
