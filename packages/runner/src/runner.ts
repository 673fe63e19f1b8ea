import { closeSync, existsSync, realpathSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { isAbsolute, posix, resolve } from 'node:path'
import { pino } from 'pino'
import type { Logger } from 'pino'
import type { LayerInfo, Store } from '@strata/store'
import type { BaseIdentity } from './base.ts'
import { ChainTooLongError, DiskFullError, RunnerError, StepCancelledError, StepFailedError, StepTimeoutError } from './errors.ts'
import type { InputLimits } from './inputs.ts'
import { encodeDescriptor } from './key.ts'
import type { BaseSpec, EnvDecl, Pipeline, StepSpec } from './pipeline.ts'
import { DEFAULT_SCOPE, MAX_READ_SCOPES, RECORD_FORMAT, checkEpoch, checkScope, loadIdentity, recordKey, signRecord, writerTrust } from '@strata/records'
import type { Identity, StepRecord } from '@strata/records'
import { MAX_LOWER_LAYERS, checkSandboxOptions, normalizeUpperRoot, runSandbox } from './sandbox.ts'
import type { OutputOptions } from './sandbox.ts'
import { isDiskFull, isFull, makeScratch, mountSpill } from './scratch.ts'
import type { Scratch } from './scratch.ts'
import { ENV_NAME, checkStrataEnv, envObject, envProblem, readStrataEnv } from './strata-env.ts'
import type { RunnerEvent, StepResult } from './events.ts'
import type { RemoteCache, RunnerContext } from './context.ts'
import { cacheOff, dropHold, sweepRuns, takeHold } from './hold.ts'
import type { Hold } from './hold.ts'
import { baseRoot } from './base.ts'
import { baseChain, chainBase, loadChain } from './chain.ts'
import type { Chain } from './chain.ts'
import { chainId, describe, remember } from './describe.ts'
import type { Described } from './describe.ts'
import { fromFleet, lookupLocal } from './lookup.ts'
import { why } from './why.ts'
import type { WhyReport } from './why.ts'

export type { MissReason, RunnerEvent, StepResult } from './events.ts'
export type { RemoteCache } from './context.ts'
export type { WhyReport, WhyStep } from './why.ts'

export interface RunnerInit {
  store: Store
  /** Where the runner keeps its identity and scratch dirs. Default: the store's data dir (must be the same filesystem). */
  dataDir?: string
  logger?: Logger
  /** Peer ids (besides this node's own) whose records count as hits; `ID@GLOB` limits one to the scopes GLOB matches. Default none. */
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
  /** Aborts creating the runner (loading the identity). */
  signal?: AbortSignal
  /** The fleet (a strata daemon), asked on a local miss. Default none: this machine only. */
  remote?: RemoteCache
}

export interface RunOptions {
  signal?: AbortSignal
  /** Run every step, looking nothing up (results are still captured and recorded). Default false. */
  noCache?: boolean
  onEvent?: (event: RunnerEvent) => void
}

export interface RunResult {
  steps: StepResult[]
  /** The environment the steps' $STRATA_ENV lines add up to. */
  env: Record<string, string>
  durationMs: number
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

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** What every step's environment starts with, before the $STRATA_ENV lines below it and its declared env. */
const BASE_ENV: Readonly<Record<string, string>> = { PATH: DEFAULT_PATH, HOME: '/root' }
const STEP_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/** Creates a runner over `store`; loads (or creates) the node identity and clears scratch dirs left by dead runs. */
export async function createRunner (init: RunnerInit): Promise<Runner> {
  const dataDir = resolve(init.dataDir ?? init.store.dataDir)
  await mkdir(`${dataDir}/runner/run`, { recursive: true })
  const identity = await loadIdentity(dataDir, { signal: init.signal })
  const runner = new StepRunner(init, dataDir, identity)
  await runner.sweep()
  return runner
}

class StepRunner implements Runner {
  readonly #ctx: RunnerContext

  constructor (init: RunnerInit, dataDir: string, identity: Identity) {
    const realDataDir = realpathSync(dataDir)
    const sandbox = { tmpSize: init.tmpSize, shared: init.shared }
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
      // With a fleet, the writers it trusts are trusted too.
      policy: {
        trusts: (p, s) => p === identity.peerId || own(p, s) || (remote !== undefined && remote.trusts(p, s)),
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
      sandbox
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
    const chain = baseChain(pipeline.base, pipeline.baseId)
    const results: StepResult[] = []
    const base = await chainBase(this.#ctx, chain, opts)
    const hold = takeHold(this.#ctx)
    try {
      for (const [index, step] of pipeline.steps.entries()) {
        if (opts.signal?.aborted === true) throw new StepCancelledError(step.name, { cause: opts.signal.reason })
        opts.onEvent?.({ type: 'start', step: step.name, index, total: pipeline.steps.length })
        results.push(await this.#step(chain, base, step, pipeline.salt ?? null, chainId(pipeline.file, step.name), opts, hold))
      }
    } finally {
      await dropHold(hold)
    }
    return { steps: results, env: envObject(chain.envLines), durationMs: performance.now() - started }
  }

  async exec (step: ExecStep, opts: RunOptions = {}): Promise<StepResult> {
    if (!STEP_NAME.test(step.name)) throw new TypeError(`step name "${step.name}" must be 1-64 characters of letters, digits, ".", "_" or "-"`)
    if (typeof step.run !== 'string' || step.run.trim() === '') throw new TypeError('step.run must be a non-empty string')
    const cwd = posix.resolve('/', step.cwd ?? '/')
    const spec: StepSpec = {
      name: step.name,
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
    const chain = baseChain(step.base ?? { kind: 'host' }, step.baseId)
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

  async #step (chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, lastId: string, opts: RunOptions, hold: Hold): Promise<StepResult> {
    const emit = opts.onEvent ?? ((): void => {})
    const t0 = performance.now()
    let described: Described
    try {
      described = await describe(this.#ctx, chain, base, step, salt, opts)
    } catch (err) {
      const e = opts.signal?.aborted === true ? new StepCancelledError(step.name, { cause: err }) : err as Error
      emit({ type: 'failed', step: step.name, reason: e instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: e })
      throw e
    }
    let { descriptor, key } = described
    const keyString = key.toString()
    emit({ type: 'key', step: step.name, key: keyString, durationMs: performance.now() - t0 })
    this.#ctx.log.debug({ step: step.name, key: keyString }, 'key computed')

    // A full store cannot take the step's result, nor lease what it would hit: caching is off from here.
    if (!hold.cacheOff && await isFull(this.#ctx.dataDir)) cacheOff(this.#ctx, hold, step.name, new DiskFullError(this.#ctx.dataDir), emit)
    if (hold.cacheOff) {
      emit({ type: 'miss', step: step.name, key: keyString, reason: 'cache-off' })
    } else if (step.cache && opts.noCache !== true) {
      let found = await lookupLocal(this.#ctx, key, hold)
      let fromPeers: { providers: number, bytes: number } | undefined
      if (!('record' in found) && this.#ctx.remote !== undefined) {
        fromPeers = await fromFleet(this.#ctx, this.#ctx.remote, step.name, key, opts.signal)
        if (fromPeers !== undefined) {
          const again = await lookupLocal(this.#ctx, key, hold)
          if ('record' in again) found = again
          else fromPeers = undefined
        }
      }
      if ('record' in found) {
        const tooLarge = envProblem(envObject([...chain.envLines, ...found.record.env], BASE_ENV))
        if (tooLarge !== undefined) {
          // Each record's env fits, but not all of them together: the step runs and fails with that error.
          this.#ctx.log.info({ step: step.name, key: keyString, reason: tooLarge.reason }, 'not using a record: the environment it adds up to could not be exec\'d')
          found = { reason: 'invalid-record' }
        }
      }
      if ('record' in found) {
        try {
          await remember(this.#ctx, lastId, key, described.bytes)
        } catch (err) {
          // It serves why() only: the hit stands.
          this.#ctx.log.info({ err, step: step.name, key: keyString }, 'cannot note the step\'s key for why()')
          if (isDiskFull(err)) cacheOff(this.#ctx, hold, step.name, err, emit)
        }
        chain.parent = key
        chain.layers.unshift(found.layer.path)
        chain.envLines.push(...found.record.env)
        const durationMs = performance.now() - t0
        this.#ctx.log.debug({ step: step.name, key: keyString, layer: found.layer.root.toString() }, 'hit')
        const hit = { type: 'hit' as const, step: step.name, key: keyString, layer: found.layer.root.toString(), size: found.layer.size, durationMs }
        emit(fromPeers !== undefined ? { ...hit, source: 'peer', providers: fromPeers.providers, bytes: fromPeers.bytes } : { ...hit, source: 'local' })
        return { name: step.name, key: keyString, layer: found.layer.root.toString(), status: 'hit', size: found.layer.size, env: found.record.env, durationMs }
      }
      this.#ctx.log.debug({ step: step.name, key: keyString, reason: found.reason }, 'miss')
      emit({ type: 'miss', step: step.name, key: keyString, reason: found.reason })
    } else {
      emit({ type: 'miss', step: step.name, key: keyString, reason: step.cache ? 'no-cache' : 'uncached-step' })
    }

    const basePath = baseRoot(chain.base)
    let scratch: Scratch
    try {
      scratch = await this.#scratch(hold, step.name, chain.layers, basePath, emit)
    } catch (err) {
      emit({ type: 'failed', step: step.name, key: keyString, reason: 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: err as Error })
      throw err
    }
    const { runDir, lockFd, lowerOption } = scratch
    let kept = false
    /** Keeps the step's upper dir mounted under the later steps of this run, uncached. */
    const keep = (ownEnv: string[]): StepResult => {
      hold.dirs.push({ dir: runDir, fd: lockFd })
      kept = true
      chain.parent = key
      chain.layers.unshift(`${runDir}/u`)
      chain.envLines.push(...ownEnv)
      return { name: step.name, key: keyString, layer: '', status: 'ran', size: 0, env: ownEnv, durationMs: performance.now() - t0 }
    }
    try {
      const env: Record<string, string> = envObject(chain.envLines, BASE_ENV)
      for (const e of step.env) {
        const v = e.value ?? this.#ctx.env[e.name]
        if (v !== undefined) env[e.name] = v
      }
      const ranAt = performance.now()
      const result = await runSandbox({
        name: step.name,
        runDir,
        lowers: chain.layers,
        base: basePath,
        mask: chain.base.kind === 'host' ? this.#ctx.dataDir : undefined,
        run: step.run,
        tmpSize: step.tmpSize ?? this.#ctx.sandbox.tmpSize,
        shared: this.#ctx.sandbox.shared,
        cwd: step.cwd,
        env,
        output: this.#ctx.output,
        timeoutMs: step.timeoutMs,
        killGraceMs: this.#ctx.killGraceMs,
        signal: opts.signal,
        log: this.#ctx.log
      }, lowerOption)
      const ranMs = performance.now() - ranAt
      if (result.killed !== undefined || result.exitCode !== 0) {
        const err = result.killed === 'timeout'
          ? new StepTimeoutError(step.name, step.timeoutMs ?? 0)
          : result.killed === 'cancel'
            ? new StepCancelledError(step.name, { cause: opts.signal?.reason })
            : new StepFailedError(step.name, result.exitCode ?? 128, result.signal)
        emit({ type: 'failed', step: step.name, key: keyString, reason: result.killed ?? 'exit', exitCode: result.exitCode, signal: result.signal, durationMs: ranMs, error: err })
        throw err
      }
      const ownEnv = await readStrataEnv(step.name, `${runDir}/env`)
      // The steps above get this environment: one that exec would refuse is this step's failure, and nothing is committed.
      checkStrataEnv(step.name, [...chain.envLines, ...ownEnv], BASE_ENV)
      emit({ type: 'ran', step: step.name, key: keyString, exitCode: 0, durationMs: ranMs })
      if (hold.cacheOff) return keep(ownEnv)

      const capAt = performance.now()
      await normalizeUpperRoot(runDir)
      let layer: LayerInfo
      try {
        layer = await this.#ctx.store.commit(`${runDir}/u`, {
          signal: opts.signal,
          onProgress: (p) => emit({ type: 'capture-progress', step: step.name, unit: p.type, done: p.done, total: p.total })
        })
      } catch (err) {
        // The cache never fails a build: the step ran, and its changes stay mounted for the rest of this run, uncached.
        if (opts.signal?.aborted === true || !existsSync(`${runDir}/u`)) throw err
        this.#ctx.log.info({ err, step: step.name, key: keyString }, 'capture failed: the step ran, its result is not cached')
        emit({ type: 'capture-failed', step: step.name, key: keyString, error: err as Error })
        if (isDiskFull(err)) cacheOff(this.#ctx, hold, step.name, err, emit)
        return keep(ownEnv)
      }
      let bytes = described.bytes
      try {
        hold.lease.add(layer.root.toString())
        if (!step.cache) {
          // Known only now: the key of an uncached step names what it produced, so the steps above it hit when it produced the same.
          descriptor = { ...descriptor, output: layer.root }
          const enc = await encodeDescriptor(descriptor)
          key = enc.key
          bytes = enc.bytes
        }
        const record: StepRecord = {
          v: RECORD_FORMAT,
          key,
          parent: chain.parent,
          layer: layer.root,
          size: layer.size,
          env: ownEnv,
          created: Date.now(),
          producer: this.#ctx.identity.peerId,
          scope: this.#ctx.scope,
          epoch: this.#ctx.policy.epoch
        }
        await this.#ctx.store.putRecord(recordKey(key, this.#ctx.scope), signRecord(record, this.#ctx.identity))
        await remember(this.#ctx, lastId, key, bytes)
      } catch (err) {
        // Committed but not recorded (a full index): the layer serves the rest of this run, and nothing finds it later.
        if (opts.signal?.aborted === true) throw err
        this.#ctx.log.info({ err, step: step.name, key: key.toString() }, 'recording the capture failed: the step ran, its result is not cached')
        emit({ type: 'capture-failed', step: step.name, key: key.toString(), error: err as Error })
        if (isDiskFull(err)) cacheOff(this.#ctx, hold, step.name, err, emit)
        chain.parent = key
        chain.layers.unshift(layer.path)
        chain.envLines.push(...ownEnv)
        return { name: step.name, key: key.toString(), layer: '', status: 'ran', size: 0, env: ownEnv, durationMs: performance.now() - t0 }
      }
      const capMs = performance.now() - capAt
      emit({ type: 'captured', step: step.name, key: key.toString(), layer: layer.root.toString(), size: layer.size, entries: layer.entries, durationMs: capMs })
      this.#ctx.log.info({ step: step.name, key: key.toString(), layer: layer.root.toString(), ranMs, capMs }, 'captured')

      chain.parent = key
      chain.layers.unshift(layer.path)
      chain.envLines.push(...ownEnv)
      return { name: step.name, key: key.toString(), layer: layer.root.toString(), status: 'ran', size: layer.size, env: ownEnv, durationMs: performance.now() - t0 }
    } catch (err) {
      if (!(err instanceof StepFailedError || err instanceof StepTimeoutError || err instanceof StepCancelledError)) {
        const e = opts.signal?.aborted === true && !(err instanceof RunnerError) ? new StepCancelledError(step.name, { cause: err }) : err as Error
        emit({ type: 'failed', step: step.name, key: keyString, reason: e instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: e })
        throw e
      }
      throw err
    } finally {
      if (!kept) {
        closeSync(lockFd)
        await rm(runDir, { recursive: true, force: true })
      }
    }
  }

  /** A scratch dir for a step: on the data dir's filesystem while caching is on; on a spill tmpfs once that filesystem is full. */
  async #scratch (hold: Hold, step: string, lowers: readonly string[], base: string, emit: (e: RunnerEvent) => void): Promise<Scratch> {
    if (!hold.cacheOff) {
      try {
        return await makeScratch(`${this.#ctx.dataDir}/runner/run`, lowers, base)
      } catch (err) {
        if (!isDiskFull(err)) throw err
        cacheOff(this.#ctx, hold, step, err, emit)
      }
    }
    hold.spill ??= await mountSpill(this.#ctx.log)
    return await makeScratch(hold.spill.dir, lowers, base)
  }

}
