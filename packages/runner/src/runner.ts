import { realpathSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { isAbsolute, posix, resolve } from 'node:path'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { DEFAULT_SCOPE, MAX_READ_SCOPES, checkEpoch, checkScope, loadIdentity, writerTrust } from '@strata/records'
import type { Identity, WriterKey } from '@strata/records'
import type { Store } from '@strata/store'
import type { BaseIdentity } from './base.ts'
import { capture } from './capture.ts'
import { baseChain, chainBase, loadChain, mergeChains } from './chain.ts'
import type { Chain } from './chain.ts'
import { claimStep } from './claim.ts'
import type { Claimed } from './claim.ts'
import type { RemoteCache, RunnerContext, StepContext } from './context.ts'
import { chainId, describe } from './describe.ts'
import type { Described } from './describe.ts'
import { ChainTooLongError, RunnerError, StepCancelledError, StepFailedError, StepTimeoutError } from './errors.ts'
import { checkJobs, runGraph, schedule, timing } from './schedule.ts'
import type { JobSlot, Scheduled } from './schedule.ts'
import type { RunnerEvent, StepResult } from './events.ts'
import { closeRun, execute, openRun } from './execute.ts'
import type { Run } from './execute.ts'
import { hit } from './hit.ts'
import { claimsDir, dropHold, sweepRuns, takeHold } from './hold.ts'
import type { Hold } from './hold.ts'
import type { InputLimits } from './inputs.ts'
import { lookupStep } from './lookup.ts'
import type { EnvDecl, BaseSpec, Pipeline, StepSpec } from './pipeline.ts'
import { MAX_LOWER_LAYERS, checkSandboxOptions } from './sandbox.ts'
import type { OutputOptions } from './sandbox.ts'
import { ENV_NAME, envObject } from './strata-env.ts'
import { why } from './why.ts'
import { deliverStepOutputs, outputPlaces } from './outputs.ts'
import type { OutputPlaces } from './outputs.ts'
import { checkExportDir, exportRun } from './export.ts'
import type { WhyReport } from './why.ts'
import { resolveWorkspace } from './workspace.ts'
import type { WorkspaceSpec } from './workspace.ts'

export type { RemoteCache } from './context.ts'
export type { MissReason, RunnerEvent, StepResult } from './events.ts'
export type { WhyReport, WhyStep } from './why.ts'

export interface RunnerInit {
  store: Store
  /** Where the runner keeps its identity and scratch dirs. Default: the store's data dir (must be the same filesystem). */
  dataDir?: string
  logger?: Logger
  /** Signers (peer ids or writer keys' `NAME-N:BASE64`, besides this node's own) whose records count as hits; `ID@GLOB` limits one to the scopes GLOB matches. Default none. */
  trustedPeers?: readonly string[]
  /** The scope this runner's records are written in (e.g. the branch: `main`, `pr/123`). Default `default`. */
  scope?: string
  /** Scopes whose records count as hits, in order of preference. Default `[scope]`. */
  readScopes?: readonly string[]
  /** The trust epoch: records are written in it, and records of earlier epochs are refused. Default the remote's, else 0. */
  epoch?: number
  /** Where env names declared without a value are read. Default process.env. */
  env?: Readonly<Record<string, string | undefined>>
  /** Where step output goes. Default process.stdout/stderr, prefixed with the step name unless stdout is a TTY. */
  output?: Partial<OutputOptions>
  /** Between SIGTERM and SIGKILL on cancel or timeout. Default 10 000 ms. */
  killGraceMs?: number
  /** Bytes each step's /tmp (and /dev/shm) may hold when strata.yml sets no `tmp-size`. Default 4 GiB. */
  tmpSize?: number
  /** Host dirs every step sees read-write at the same path (a build cache, a test's side channel); never captured. */
  shared?: readonly string[]
  /** Bounds on what a step's inputs may make the runner read. Default 100 000 files, 8 GiB. */
  inputLimits?: InputLimits
  /**
   * The fleet's secret salt, the same on every VM that shares the cache (e.g. from
   * the CI secret store): input and env digests in the shared descriptors are keyed
   * with it, so that a reader without it cannot confirm a guessed file or value.
   * Default none.
   */
  salt?: string
  /**
   * The writer key this job signs its records with (from the CI's secret store):
   * readers that trust its public part accept them, whatever VM ran the job.
   * Default none: records are signed by the node identity.
   */
  writerKey?: WriterKey
  /** Host paths no step sees on the host base, like the data dir: where the writer key came from. Default none. */
  hide?: readonly string[]
  /** Aborts creating the runner (loading the identity). */
  signal?: AbortSignal
  /** The fleet (a strata daemon), asked on a local miss. Default none: this machine only. */
  remote?: RemoteCache
}

export interface RunOptions {
  signal?: AbortSignal
  /** Run every step, looking nothing up (results are still captured and recorded). Default false. */
  noCache?: boolean
  /** run() only: write the changes of the whole run (every step's layer merged, whiteouts applied) into this dir, absent or empty. */
  export?: string
  onEvent?: (event: RunnerEvent) => void
  /** run() only: steps run at once at most (those whose parents are done). Default: the number of CPUs. */
  jobs?: number
  /** run() only: after a step fails, go on with the steps that do not depend on it instead of cancelling the others. Default false. */
  keepGoing?: boolean
  /**
   * How long a step that misses waits while another step, process or peer builds its key,
   * before running it too; never past the step's timeout. Default 30 minutes.
   */
  claimWaitMs?: number
}

export interface RunResult {
  /** The steps that ran or hit, in file order. */
  steps: StepResult[]
  /** The environment the steps' $STRATA_ENV lines add up to. */
  env: Record<string, string>
  durationMs: number
  /** The chain of steps whose durations, end to end, took longest: what bounds the run's wall time. */
  criticalPath: { steps: string[], durationMs: number }
  /** The steps' durations added up: the wall time had they run one after another. */
  stepsMs: number
}

/** One step for exec(): what a strata.yml step has, plus where to start from. */
export interface ExecStep {
  name: string
  run: string
  /** Default `/`. */
  cwd?: string
  env?: EnvDecl[]
  /** Absolute paths or globs, or relative to cwd. */
  inputs?: string[]
  /** Key of the step to run on top of (from a previous exec or run); default: directly on the base. */
  parent?: string
  /** A checkout to show at `path` (as strata.yml's `workspace`); default none. */
  workspace?: WorkspaceSpec
  /** The step's workspace filter; needs `workspace`. */
  filter?: string[]
  /** Default host. Must be the base the parent chain was built on. */
  base?: BaseSpec
  baseId?: string
  salt?: string
  /** Default true. */
  cache?: boolean
  timeoutMs?: number
}

export interface Runner {
  /** This node's peer id (the signer of its records). */
  readonly peerId: string
  run (pipeline: Pipeline, opts?: RunOptions): Promise<RunResult>
  exec (step: ExecStep, opts?: RunOptions): Promise<StepResult>
  why (pipeline: Pipeline, step: string, opts?: { signal?: AbortSignal }): Promise<WhyReport>
}

const STEP_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/** Creates a runner over `store`; loads (or creates) the node identity and clears scratch dirs left by dead runs. */
export async function createRunner (init: RunnerInit): Promise<Runner> {
  const dataDir = resolve(init.dataDir ?? init.store.dataDir)
  await mkdir(`${dataDir}/runner/run`, { recursive: true })
  await mkdir(claimsDir(dataDir), { recursive: true })
  const identity = await loadIdentity(dataDir, { signal: init.signal })
  const runner = new StepRunner(init, dataDir, identity)
  await runner.sweep()
  return runner
}

/**
 * Runs steps phase by phase: describe (the key), lookup (store, then fleet), then
 * either the hit or execute and capture. Each phase is a module; this wires them.
 */
class StepRunner implements Runner {
  readonly #ctx: RunnerContext

  constructor (init: RunnerInit, dataDir: string, identity: Identity) {
    const realDataDir = realpathSync(dataDir)
    const sandbox = { tmpSize: init.tmpSize, shared: init.shared, hide: init.hide?.map((p) => realpathSync(p)) }
    checkSandboxOptions(sandbox, realDataDir)
    const own = writerTrust(init.trustedPeers ?? [])
    const remote = init.remote
    const scope = checkScope(init.scope ?? DEFAULT_SCOPE)
    const scopes = [...new Set((init.readScopes ?? [scope]).map(checkScope))]
    if (scopes.length === 0 || scopes.length > MAX_READ_SCOPES) throw new TypeError(`readScopes must name 1 to ${MAX_READ_SCOPES} scopes, got ${scopes.length}`)
    this.#ctx = {
      store: init.store,
      dataDir: realDataDir,
      log: (init.logger ?? pino({ level: 'silent' })).child({ component: 'runner' }),
      identity,
      writerKey: init.writerKey,
      // With a fleet, the writers it trusts are trusted too.
      policy: {
        trusts: (p, s) => p === identity.peerId || p === init.writerKey?.id || own(p, s) || (remote !== undefined && remote.trusts(p, s)),
        epoch: checkEpoch(init.epoch ?? remote?.epoch ?? 0),
        scopes
      },
      scope,
      remote,
      env: init.env ?? process.env,
      output: {
        stdout: init.output?.stdout ?? process.stdout,
        stderr: init.output?.stderr ?? process.stderr,
        prefix: init.output?.prefix ?? (process.stdout.isTTY !== true)
      },
      killGraceMs: init.killGraceMs ?? 10_000,
      limits: init.inputLimits ?? {},
      fleetSalt: init.salt ?? null,
      sandbox,
      claims: new Map()
    }
  }

  get peerId (): string {
    return this.#ctx.identity.peerId
  }

  /** Removes scratch dirs, and unmounts scratch space, whose owner is gone. */
  async sweep (): Promise<void> {
    await sweepRuns(this.#ctx)
  }

  async run (pipeline: Pipeline, opts: RunOptions = {}): Promise<RunResult> {
    // Refused before the first step runs rather than at the step that would stack past it.
    if (pipeline.steps.length - 1 > MAX_LOWER_LAYERS) throw new ChainTooLongError(pipeline.steps.length - 1, MAX_LOWER_LAYERS)
    const started = performance.now()
    const template = baseChain(pipeline.base, pipeline.baseId)
    if (pipeline.workspace !== undefined) template.workspace = resolveWorkspace(pipeline.workspace, this.#ctx.dataDir)
    const exportDir = opts.export !== undefined ? await checkExportDir(opts.export) : undefined
    const base = await chainBase(this.#ctx, template, opts)
    const graph = runGraph(pipeline.steps)
    const jobs = checkJobs(opts.jobs)
    // Lines of steps running at once would interleave: each carries its step's name then.
    const output = graph.parallel && jobs > 1 ? { ...this.#ctx.output, prefix: true } : this.#ctx.output
    const hold = takeHold(this.#ctx)
    const scheduled = schedule(graph, jobs, opts, async (index, parents, signal, slot) => {
      const step = pipeline.steps[index]!
      const chain = mergeChains(template, parents)
      opts.onEvent?.({ type: 'start', step: step.name, index, total: pipeline.steps.length })
      const places = outputPlaces(pipeline, step)
      const stepOpts = { ...opts, signal }
      const result = await this.#step(chain, base, step, pipeline.salt ?? null, chainId(pipeline.file, step.name), stepOpts, hold, places, output, slot)
      if (step.outputs !== undefined) await deliverStepOutputs(this.#ctx, chain, step, places, stepOpts)
      return { result, chain }
    })
    let done: Scheduled
    try {
      done = await scheduled
      // Every leaf's stack, in file order: the whole run's changes and environment.
      const all = mergeChains(template, graph.leaves.map((i) => done.chains[i]!))
      if (exportDir !== undefined) await exportRun(this.#ctx, all, pipeline.steps.at(-1)!.name, exportDir, opts)
      const steps = done.results.filter((r): r is StepResult => r !== undefined)
      const durationMs = performance.now() - started
      return { steps, env: envObject(all.envLines), durationMs, ...timing(graph, done.results) }
    } finally {
      await dropHold(hold)
    }
  }

  async exec (step: ExecStep, opts: RunOptions = {}): Promise<StepResult> {
    const spec = execSpec(step)
    const chain = baseChain(step.base ?? { kind: 'host' }, step.baseId)
    if (step.workspace !== undefined) chain.workspace = resolveWorkspace(step.workspace, this.#ctx.dataDir)
    const base = await chainBase(this.#ctx, chain, opts)
    const hold = takeHold(this.#ctx)
    try {
      if (step.parent !== undefined) await loadChain(this.#ctx, chain, base, step.parent, hold)
      opts.onEvent?.({ type: 'start', step: step.name, index: 0, total: 1 })
      return await this.#step(chain, base, spec, step.salt ?? null, chainId(undefined, step.name), opts, hold)
    } finally {
      await dropHold(hold)
    }
  }

  async why (pipeline: Pipeline, stepName: string, opts: { signal?: AbortSignal } = {}): Promise<WhyReport> {
    return await why(this.#ctx, pipeline, stepName, opts)
  }

  /** One step: describe → lookup → the hit, or execute → capture. */
  async #step (chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, lastId: string, opts: RunOptions, hold: Hold, places?: OutputPlaces, output?: OutputOptions, slot?: JobSlot): Promise<StepResult> {
    const ctx = this.#ctx
    const emit = opts.onEvent ?? ((): void => {})
    const s: StepContext = { step, chain, base, salt, lastId, hold, signal: opts.signal, noCache: opts.noCache === true, emit, t0: performance.now(), places, output: output ?? ctx.output, claimWaitMs: opts.claimWaitMs, slot }
    /** Reports the step's failure; a step error from execute() was reported there. */
    const failed = (err: Error, key?: string): Error => {
      emit({ type: 'failed', step: step.name, ...(key !== undefined ? { key } : {}), reason: err instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - s.t0, error: err })
      return err
    }

    let described: Described
    try {
      described = await describe(ctx, chain, base, step, salt, opts)
    } catch (err) {
      throw failed(opts.signal?.aborted === true ? new StepCancelledError(step.name, { cause: err }) : err as Error)
    }
    const key = described.key.toString()
    emit({ type: 'key', step: step.name, key, durationMs: performance.now() - s.t0, warnings: described.warnings })
    ctx.log.debug({ step: step.name, key }, 'key computed')

    const found = await lookupStep(ctx, s, described.key)
    if ('record' in found) return await hit(ctx, s, described, found)
    // One build per key: another building it now means a wait, then its result.
    let claimed: Awaited<ReturnType<typeof claimStep>>
    try {
      claimed = await claimStep(ctx, s, described.key)
    } catch (err) {
      throw failed(err as Error, key)
    }
    try {
      // Given up while it waited: hit or build, the step holds a job slot again.
      await slot?.take()
    } catch (err) {
      if ('held' in claimed) await claimed.held.release('failed')
      throw failed(new StepCancelledError(step.name, { cause: err }), key)
    }
    if ('found' in claimed) return await hit(ctx, s, described, claimed.found)
    const claim: Claimed = claimed.held
    ctx.log.debug({ step: step.name, key, reason: found.reason }, 'miss')
    emit({ type: 'miss', step: step.name, key, reason: found.reason })

    let outcome: 'built' | 'failed' = 'failed'
    let run: Run
    try {
      run = await openRun(ctx, s, described)
    } catch (err) {
      await claim.release(outcome)
      throw failed(err as Error, key)
    }
    try {
      const ran = await execute(ctx, s, run, key)
      const result = await capture(ctx, s, run, described, ran)
      // A result that could not be stored left no record for the waiters.
      if (result.layer !== '') outcome = 'built'
      return result
    } catch (err) {
      if (err instanceof StepFailedError || err instanceof StepTimeoutError || err instanceof StepCancelledError) throw err
      throw failed(opts.signal?.aborted === true && !(err instanceof RunnerError) ? new StepCancelledError(step.name, { cause: err }) : err as Error, key)
    } finally {
      // Never throws: a claim not released expires with this process.
      await claim.release(outcome)
      await closeRun(run)
    }
  }
}

/** exec()'s step as a strata.yml step; bad arguments are a TypeError. */
function execSpec (step: ExecStep): StepSpec {
  if (!STEP_NAME.test(step.name)) throw new TypeError(`step name "${step.name}" must be 1-64 characters of letters, digits, ".", "_" or "-"`)
  if (typeof step.run !== 'string' || step.run.trim() === '') throw new TypeError('step.run must be a non-empty string')
  const cwd = posix.resolve('/', step.cwd ?? '/')
  const spec: StepSpec = {
    name: step.name,
    // An exec() step chains by `parent`, not by `use`.
    use: [],
    run: step.run,
    cwd,
    env: [...(step.env ?? [])].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    inputs: (step.inputs ?? []).map((p) => isAbsolute(p) ? posix.normalize(p) : posix.resolve(cwd, p)),
    cache: step.cache ?? true
  }
  for (const e of spec.env) {
    if (!ENV_NAME.test(e.name)) throw new TypeError(`"${e.name}" is not an environment variable name`)
    if (e.name === 'STRATA_ENV' || e.name.startsWith('STRATA_SB_')) throw new TypeError(`${e.name} is reserved by strata`)
  }
  if (step.timeoutMs !== undefined) spec.timeoutMs = step.timeoutMs
  if (step.filter !== undefined) {
    if (step.workspace === undefined) throw new TypeError('step.filter needs step.workspace')
    spec.filter = [...step.filter]
  }
  return spec
}
