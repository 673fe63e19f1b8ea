import { createHash } from 'node:crypto'
import { closeSync, existsSync, openSync, readdirSync, realpathSync, rmSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { machine } from 'node:os'
import { isAbsolute, posix, resolve } from 'node:path'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { flock } from '@strata/sys'
import { takeLease } from '@strata/store'
import type { LayerInfo, Lease, Store } from '@strata/store'
import { baseIdentity } from './base.ts'
import type { BaseIdentity } from './base.ts'
import {
  BaseMismatchError, ChainTooLongError, DiskFullError, ParentNotFoundError, RunnerError, StepCancelledError, StepFailedError,
  StepNotFoundError, StepTimeoutError
} from './errors.ts'
import { collectInputs } from './inputs.ts'
import type { InputLimits } from './inputs.ts'
import { KEY_FORMAT, decodeDescriptor, describeChange, diffDescriptors, digestKey, encodeDescriptor, envValueDigest } from './key.ts'
import type { KeyChange, KeyDescriptor } from './key.ts'
import type { BaseSpec, EnvDecl, Pipeline, StepSpec } from './pipeline.ts'
import { DEFAULT_SCOPE, MAX_READ_SCOPES, RECORD_FORMAT, RecordInvalidError, checkEpoch, checkScope, loadIdentity, openRecord, recordKey, signRecord, writerTrust } from '@strata/records'
import type { Identity, RecordPolicy, StepRecord } from '@strata/records'
import { descriptorKey, lastKey } from './slots.ts'
import { MAX_LOWER_LAYERS, checkSandboxOptions, normalizeUpperRoot, runSandbox } from './sandbox.ts'
import type { OutputOptions } from './sandbox.ts'
import { isDiskFull, isFull, makeScratch, mountSpill, sweepSpills } from './scratch.ts'
import type { Scratch, Spill } from './scratch.ts'
import { ENV_NAME, checkStrataEnv, envObject, envProblem, readStrataEnv } from './strata-env.ts'
import { LayeredView } from './view.ts'
import { deliverOutputs, outputPlaces, planOutputs } from './outputs.ts'
import type { OutputPlaces } from './outputs.ts'
import { checkExportDir, exportLayers } from './export.ts'
import { describeExpiry, isExpired } from './ttl.ts'

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

/** What the runner needs from the fleet: find a key's record and bring its layer into the store. */
export interface RemoteCache {
  /**
   * Looks `key` up among peers and fetches its layer into the store; afterwards
   * the store holds the record and the layer. Throws when it cannot.
   */
  resolve (key: string, opts: { signal?: AbortSignal, scopes?: readonly string[] }): Promise<{ providers: number, bytes: number, durationMs: number }>
  /** Whether the fleet accepts records signed by `peer` in `scope` (on top of the runner's own trusted peers). */
  trusts (peer: string, scope: string): boolean
  /** The fleet's trust epoch, when it has one. */
  readonly epoch?: number
}

export interface RunOptions {
  signal?: AbortSignal
  /** Run every step, looking nothing up (results are still captured and recorded). Default false. */
  noCache?: boolean
  /** run() only: write the changes of the whole run (every step's layer merged, whiteouts applied) into this dir, absent or empty. */
  export?: string
  onEvent?: (event: RunnerEvent) => void
}

export type MissReason = 'no-record' | 'invalid-record' | 'expired' | 'layer-missing' | 'layer-corrupt' | 'no-cache' | 'uncached-step' | 'cache-off'

export type RunnerEvent =
  | { type: 'start', step: string, index: number, total: number }
  | { type: 'key', step: string, key: string, durationMs: number }
  | { type: 'hit', step: string, key: string, layer: string, size: number, source: 'local', durationMs: number }
  | { type: 'hit', step: string, key: string, layer: string, size: number, source: 'peer', durationMs: number, providers: number, bytes: number }
  | { type: 'miss', step: string, key: string, reason: MissReason }
  | { type: 'ran', step: string, key: string, exitCode: 0, durationMs: number }
  | { type: 'capture-progress', step: string, unit: 'entries' | 'bytes', done: number, total: number }
  | { type: 'captured', step: string, key: string, layer: string, size: number, entries: number, durationMs: number }
  /** The step ran but its result could not be stored (a full disk): later steps of this run still see its changes. */
  | { type: 'capture-failed', step: string, key: string, error: Error }
  /** Once per run: the data dir's filesystem is full; later steps look nothing up, commit nothing and run on scratch space elsewhere. */
  | { type: 'cache-off', step: string, error: Error }
  /** After a step that declares `outputs` ran or hit: they are in the host workspace. */
  | { type: 'outputs', step: string, paths: string[], entries: number, bytes: number, durationMs: number }
  /** After the last step, with `export`: the run's changes are in `dir`. */
  | { type: 'exported', step: string, dir: string, entries: number, bytes: number, durationMs: number }
  | { type: 'failed', step: string, key?: string, reason: 'exit' | 'timeout' | 'cancel' | 'error', exitCode: number | null, signal: string | null, durationMs: number, error: Error }

export interface StepResult {
  name: string
  /** The step's cache key (CID string): pass it as `parent` to exec() to chain. */
  key: string
  /** Root CID of the step's layer; empty when the step ran but its capture failed. */
  layer: string
  status: 'hit' | 'ran'
  /** Bytes of file content in the layer. */
  size: number
  /** NAME=value lines this step appended to $STRATA_ENV. */
  env: string[]
  durationMs: number
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

export interface WhyStep {
  name: string
  /** The key the step would have now (for a `cache: false` step: the key it had last time). */
  key: string
  /** The key it had when it last ran or hit, if it ever did. */
  previousKey: string | null
  /** A record and layer for `key` are here: running now would hit (never for a `cache: false` step). */
  hit: boolean
  /** Field-by-field changes from previousKey to key. */
  changes: KeyChange[]
  /** Human-readable lines, one per change. */
  reasons: string[]
  /** A step below could not be restored, so this step's inputs were read without its changes. */
  approximate: boolean
  /** The record for `key` is older than the step's `cache: { ttl }`. */
  expired?: { created: number, ttlMs: number }
}

export interface WhyReport {
  step: string
  /** The asked step last; the ones below first, so a CLI can point at the first that changed. */
  steps: WhyStep[]
}

export interface Runner {
  /** This node's peer id (the signer of its records). */
  readonly peerId: string
  run (pipeline: Pipeline, opts?: RunOptions): Promise<RunResult>
  exec (step: ExecStep, opts?: RunOptions): Promise<StepResult>
  why (pipeline: Pipeline, step: string, opts?: { signal?: AbortSignal }): Promise<WhyReport>
}

/** The filesystem a step starts from: the base and the layers of the steps below. */
interface Chain {
  base: BaseSpec
  baseId: string | null
  /** Key of the step below, or null on the base. */
  parent: CID | null
  /** Layer dirs below, newest first. */
  layers: string[]
  /** Accumulated $STRATA_ENV lines, oldest first. */
  envLines: string[]
  /** Set once a step below could not be restored (why() only). */
  approximate: boolean
}

interface Described {
  descriptor: KeyDescriptor
  key: CID
  bytes: Uint8Array
}

const USER = '0:0'
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
  readonly #store: Store
  readonly #dataDir: string
  readonly #log: Logger
  readonly #identity: Identity
  readonly #policy: RecordPolicy & { scopes: readonly string[], epoch: number }
  readonly #scope: string
  readonly #remote: RemoteCache | undefined
  readonly #env: Readonly<Record<string, string | undefined>>
  readonly #output: OutputOptions
  readonly #killGraceMs: number
  readonly #limits: InputLimits
  readonly #fleetSalt: string | null
  readonly #sandbox: { tmpSize?: number, shared?: readonly string[] }

  constructor (init: RunnerInit, dataDir: string, identity: Identity) {
    this.#store = init.store
    this.#dataDir = realpathSync(dataDir)
    this.#sandbox = { tmpSize: init.tmpSize, shared: init.shared }
    checkSandboxOptions(this.#sandbox, this.#dataDir)
    this.#log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'runner' })
    this.#identity = identity
    const own = writerTrust(init.trustedPeers ?? [])
    const remote = init.remote
    this.#remote = remote
    this.#scope = checkScope(init.scope ?? DEFAULT_SCOPE)
    const scopes = [...new Set((init.readScopes ?? [this.#scope]).map(checkScope))]
    if (scopes.length === 0 || scopes.length > MAX_READ_SCOPES) throw new TypeError(`readScopes must name 1 to ${MAX_READ_SCOPES} scopes, got ${scopes.length}`)
    // With a fleet, the writers it trusts are trusted too.
    this.#policy = {
      trusts: (p, scope) => p === identity.peerId || own(p, scope) || (remote !== undefined && remote.trusts(p, scope)),
      epoch: checkEpoch(init.epoch ?? remote?.epoch ?? 0),
      scopes
    }
    this.#env = init.env ?? process.env
    this.#output = {
      stdout: init.output?.stdout ?? process.stdout,
      stderr: init.output?.stderr ?? process.stderr,
      prefix: init.output?.prefix ?? (process.stdout.isTTY !== true)
    }
    this.#killGraceMs = init.killGraceMs ?? 10_000
    this.#limits = init.inputLimits ?? {}
    this.#fleetSalt = init.salt ?? null
  }

  get peerId (): string {
    return this.#identity.peerId
  }

  /** Removes scratch dirs, and unmounts scratch space, whose owner is gone (it held an flock on `lock` while alive). */
  async sweep (): Promise<void> {
    await sweepSpills(this.#log)
    const root = `${this.#dataDir}/runner/run`
    for (const name of readdirSync(root)) {
      const dir = `${root}/${name}`
      let fd: number | undefined
      try {
        fd = openSync(`${dir}/lock`, 'r')
        if (!flock(fd, { exclusive: true, wait: false })) continue
      } catch {
        // no lock file: creation was interrupted
      } finally {
        if (fd !== undefined) closeSync(fd)
      }
      this.#log.info({ dir }, 'removing a scratch dir left by a dead run')
      rmSync(dir, { recursive: true, force: true })
    }
  }

  async run (pipeline: Pipeline, opts: RunOptions = {}): Promise<RunResult> {
    // Refused before the first step runs rather than at the step that would stack past it.
    if (pipeline.steps.length - 1 > MAX_LOWER_LAYERS) throw new ChainTooLongError(pipeline.steps.length - 1, MAX_LOWER_LAYERS)
    const started = performance.now()
    const chain: Chain = { base: pipeline.base, baseId: pipeline.baseId ?? null, parent: null, layers: [], envLines: [], approximate: false }
    const results: StepResult[] = []
    const exportDir = opts.export !== undefined ? await checkExportDir(opts.export) : undefined
    const base = await this.#baseIdentity(chain, opts)
    const hold = this.#hold()
    try {
      for (const [index, step] of pipeline.steps.entries()) {
        if (opts.signal?.aborted === true) throw new StepCancelledError(step.name, { cause: opts.signal.reason })
        opts.onEvent?.({ type: 'start', step: step.name, index, total: pipeline.steps.length })
        const places = outputPlaces(pipeline, step)
        results.push(await this.#step(chain, base, step, pipeline.salt ?? null, chainId(pipeline.file, step.name), opts, hold, places))
        if (step.outputs !== undefined) await this.#deliver(chain, step, places, opts)
      }
      if (exportDir !== undefined) await this.#export(chain, pipeline.steps.at(-1)!.name, exportDir, opts)
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
    const chain: Chain = { base: step.base ?? { kind: 'host' }, baseId: step.baseId ?? null, parent: null, layers: [], envLines: [], approximate: false }
    const base = await this.#baseIdentity(chain, opts)
    const hold = this.#hold()
    try {
      if (step.parent !== undefined) await this.#loadChain(chain, base, step.parent, hold)
      opts.onEvent?.({ type: 'start', step: step.name, index: 0, total: 1 })
      return await this.#step(chain, base, spec, step.salt ?? null, chainId(undefined, step.name), opts, hold)
    } finally {
      await dropHold(hold)
    }
  }

  async why (pipeline: Pipeline, stepName: string, opts: { signal?: AbortSignal } = {}): Promise<WhyReport> {
    const target = pipeline.steps.findIndex((s) => s.name === stepName)
    if (target === -1) throw new StepNotFoundError(stepName, pipeline.steps.map((s) => s.name))
    const chain: Chain = { base: pipeline.base, baseId: pipeline.baseId ?? null, parent: null, layers: [], envLines: [], approximate: false }
    const base = await this.#baseIdentity(chain, opts)
    const steps: WhyStep[] = []
    for (const step of pipeline.steps.slice(0, target + 1)) {
      const approximate = chain.approximate
      let { descriptor, key } = await this.#describe(chain, base, step, pipeline.salt ?? null, opts)
      const lastBytes = await this.#store.getRecord(lastKey(chainId(pipeline.file, step.name)))
      const previousKey = lastBytes !== undefined ? CID.parse(Buffer.from(lastBytes).toString()) : null
      const previous = previousKey !== null ? await this.#descriptor(previousKey) : undefined
      if (!step.cache && previousKey !== null && previous?.output !== undefined) {
        // Its key depends on what it produced: compare against the last one, with that output.
        descriptor = { ...descriptor, output: previous.output }
        key = (await encodeDescriptor(descriptor)).key
      }
      const changes = previous !== undefined ? diffDescriptors(previous, descriptor) : []
      const found = await this.#lookup(key, undefined, step.cache ? step.ttlMs : undefined)
      const expired = 'expired' in found && found.expired !== undefined && step.ttlMs !== undefined ? { created: found.expired, ttlMs: step.ttlMs } : undefined
      const reasons = previous === undefined ? ['this step has not run here before'] : changes.map(describeChange)
      if (expired !== undefined) reasons.push(describeExpiry(expired.created, expired.ttlMs))
      steps.push({
        name: step.name,
        key: key.toString(),
        previousKey: previousKey?.toString() ?? null,
        hit: step.cache && 'record' in found,
        changes,
        reasons,
        approximate,
        ...(expired !== undefined ? { expired } : {})
      })
      chain.parent = key
      if ('record' in found) {
        chain.layers.unshift(found.layer.path)
        chain.envLines.push(...found.record.env)
      } else {
        chain.approximate = true
      }
    }
    return { step: stepName, steps }
  }

  async #baseIdentity (chain: Chain, opts: { signal?: AbortSignal }): Promise<BaseIdentity> {
    return await baseIdentity(chain.base, chain.baseId ?? undefined, `${this.#dataDir}/runner`, opts)
  }

  /** Fills `chain` from the records of `parent` and the steps below it, down to the base. */
  async #loadChain (chain: Chain, base: BaseIdentity, parent: string, hold: Hold): Promise<void> {
    let key: CID
    try {
      key = CID.parse(parent)
    } catch (err) {
      throw new TypeError(`parent "${parent}" is not a key`, { cause: err })
    }
    chain.parent = key
    const envGroups: string[][] = []
    for (let depth = 0; ; depth++) {
      if (depth > 10_000) throw new ParentNotFoundError(parent, 'the chain of records does not end')
      const found = await this.#lookup(key, hold)
      if (!('record' in found)) throw new ParentNotFoundError(key.toString(), found.reason === 'layer-missing' ? 'its layer is not in the store' : found.reason === 'layer-corrupt' ? 'its layer is corrupt (marked; run the parent step again)' : 'no valid record in the store')
      chain.layers.push(found.layer.path)
      envGroups.unshift(found.record.env)
      if (found.record.parent === null) {
        const d = await this.#descriptor(key)
        if (d === undefined) throw new ParentNotFoundError(key.toString(), 'its key descriptor is not in the store')
        if (CID.asCID(d.parent) !== null || !sameBase(d.parent as BaseIdentity, base)) throw new BaseMismatchError(parent)
        break
      }
      key = found.record.parent
    }
    chain.envLines = envGroups.flat()
  }

  async #descriptor (key: CID): Promise<KeyDescriptor | undefined> {
    const bytes = await this.#store.getRecord(descriptorKey(key))
    if (bytes === undefined) return undefined
    return await decodeDescriptor(key, bytes)
  }

  async #describe (chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, opts: { signal?: AbortSignal }): Promise<Described> {
    const view = new LayeredView(chain.layers, chain.base.kind === 'host' ? '/' : chain.base.path)
    const keyed = digestKey(salt, this.#fleetSalt)
    const inputs = await collectInputs(step.name, step.inputs, view, this.#limits, { ...opts, digestKey: keyed })
    const env: Array<[string, Uint8Array | null]> = step.env.map((e) => {
      const v = e.value ?? this.#env[e.name]
      return [e.name, v === undefined ? null : envValueDigest(v, keyed)]
    })
    const descriptor: KeyDescriptor = {
      v: KEY_FORMAT,
      parent: chain.parent ?? base,
      run: step.run,
      cwd: step.cwd,
      user: USER,
      env,
      inputs,
      platform: { os: 'linux', arch: machine() },
      salt: keyed.id
    }
    const { key, bytes } = await encodeDescriptor(descriptor)
    return { descriptor, key, bytes }
  }

  /** The first record, in read-scope order, that verifies under the policy and whose layer is here. */
  /** With `hold`, the layer is leased before it is looked for, so that a collection cannot take it between the check and the mount. */
  /** With `ttlMs`, a record older than that is skipped: `expired` (with its `created`) unless another scope has a valid one. */
  async #lookup (key: CID, hold?: Hold, ttlMs?: number): Promise<{ record: StepRecord, layer: LayerInfo } | { reason: MissReason, expired?: number }> {
    let reason: MissReason = 'no-record'
    let expired: number | undefined
    for (const scope of this.#policy.scopes) {
      const bytes = await this.#store.getRecord(recordKey(key, scope))
      if (bytes === undefined) continue
      let record: StepRecord
      try {
        record = openRecord(key, bytes, this.#policy)
        if (record.scope !== scope) throw new RecordInvalidError(key.toString(), 'wrong-scope', `is in scope ${record.scope} but stored under ${scope}`)
      } catch (err) {
        if (!(err instanceof RecordInvalidError)) throw err
        this.#log.warn({ err, key: key.toString(), scope, reason: err.reason }, 'ignoring a record')
        if (reason === 'no-record') reason = 'invalid-record'
        continue
      }
      if (isExpired(record.created, ttlMs)) {
        if (reason === 'no-record' || reason === 'invalid-record') reason = 'expired'
        expired ??= record.created
        continue
      }
      hold?.lease.add(record.layer.toString())
      // A layer changed since its commit is marked by the check and never hit: the step runs again.
      const found = await this.#store.checkLayer(record.layer)
      if (found.status !== 'ok') {
        if (found.status === 'corrupt') this.#log.warn({ key: key.toString(), layer: found.root, path: found.path, reason: found.reason }, 'the layer of a record is corrupt: running the step again')
        reason = found.status === 'corrupt' ? 'layer-corrupt' : 'layer-missing'
        continue
      }
      return { record, layer: found.layer }
    }
    return expired !== undefined ? { reason, expired } : { reason }
  }

  /** A lease on the layers this run mounts (under the store's data dir, where its collector looks). */
  #hold (): Hold {
    return { lease: takeLease(this.#store.dataDir), dirs: [], cacheOff: false }
  }

  async #step (chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, lastId: string, opts: RunOptions, hold: Hold, places?: OutputPlaces): Promise<StepResult> {
    const emit = opts.onEvent ?? ((): void => {})
    const t0 = performance.now()
    let described: Described
    try {
      described = await this.#describe(chain, base, step, salt, opts)
    } catch (err) {
      const e = opts.signal?.aborted === true ? new StepCancelledError(step.name, { cause: err }) : err as Error
      emit({ type: 'failed', step: step.name, reason: e instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: e })
      throw e
    }
    let { descriptor, key } = described
    const keyString = key.toString()
    emit({ type: 'key', step: step.name, key: keyString, durationMs: performance.now() - t0 })
    this.#log.debug({ step: step.name, key: keyString }, 'key computed')

    // A full store cannot take the step's result, nor lease what it would hit: caching is off from here.
    if (!hold.cacheOff && await isFull(this.#dataDir)) this.#cacheOff(hold, step.name, new DiskFullError(this.#dataDir), emit)
    if (hold.cacheOff) {
      emit({ type: 'miss', step: step.name, key: keyString, reason: 'cache-off' })
    } else if (step.cache && opts.noCache !== true) {
      let found = await this.#lookup(key, hold, step.ttlMs)
      let fromPeers: { providers: number, bytes: number } | undefined
      if (!('record' in found) && this.#remote !== undefined) {
        fromPeers = await this.#fromFleet(step.name, key, opts)
        if (fromPeers !== undefined) {
          const again = await this.#lookup(key, hold, step.ttlMs)
          if ('record' in again) found = again
          else fromPeers = undefined
        }
      }
      if ('record' in found) {
        const tooLarge = envProblem(envObject([...chain.envLines, ...found.record.env], BASE_ENV))
        if (tooLarge !== undefined) {
          // Each record's env fits, but not all of them together: the step runs and fails with that error.
          this.#log.info({ step: step.name, key: keyString, reason: tooLarge.reason }, 'not using a record: the environment it adds up to could not be exec\'d')
          found = { reason: 'invalid-record' }
        }
      }
      if ('record' in found) {
        try {
          await this.#remember(lastId, key, described.bytes)
        } catch (err) {
          // It serves why() only: the hit stands.
          this.#log.info({ err, step: step.name, key: keyString }, 'cannot note the step\'s key for why()')
          if (isDiskFull(err)) this.#cacheOff(hold, step.name, err, emit)
        }
        chain.parent = key
        chain.layers.unshift(found.layer.path)
        chain.envLines.push(...found.record.env)
        const durationMs = performance.now() - t0
        this.#log.debug({ step: step.name, key: keyString, layer: found.layer.root.toString() }, 'hit')
        const hit = { type: 'hit' as const, step: step.name, key: keyString, layer: found.layer.root.toString(), size: found.layer.size, durationMs }
        emit(fromPeers !== undefined ? { ...hit, source: 'peer', providers: fromPeers.providers, bytes: fromPeers.bytes } : { ...hit, source: 'local' })
        return { name: step.name, key: keyString, layer: found.layer.root.toString(), status: 'hit', size: found.layer.size, env: found.record.env, durationMs }
      }
      this.#log.debug({ step: step.name, key: keyString, reason: found.reason }, 'miss')
      emit({ type: 'miss', step: step.name, key: keyString, reason: found.reason })
    } else {
      emit({ type: 'miss', step: step.name, key: keyString, reason: step.cache ? 'no-cache' : 'uncached-step' })
    }

    const basePath = chain.base.kind === 'host' ? '/' : chain.base.path
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
        const v = e.value ?? this.#env[e.name]
        if (v !== undefined) env[e.name] = v
      }
      // Secrets reach the step's environment only: not the descriptor, the record or a log line.
      for (const name of step.secrets ?? []) {
        const v = this.#env[name]
        if (v !== undefined) env[name] = v
        else this.#log.info({ step: step.name, secret: name }, 'a secret the step declares is not set')
      }
      const ranAt = performance.now()
      const result = await runSandbox({
        name: step.name,
        runDir,
        lowers: chain.layers,
        base: basePath,
        mask: chain.base.kind === 'host' ? this.#dataDir : undefined,
        run: step.run,
        tmpSize: step.tmpSize ?? this.#sandbox.tmpSize,
        shared: this.#sandbox.shared,
        cwd: step.cwd,
        env,
        output: this.#output,
        timeoutMs: step.timeoutMs,
        killGraceMs: this.#killGraceMs,
        signal: opts.signal,
        log: this.#log
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
      // A missing output is the step's failure, found before anything is committed.
      if (step.outputs !== undefined && places !== undefined) await planOutputs(step.name, new LayeredView([`${runDir}/u`, ...chain.layers], basePath), places, step.outputs, opts)
      emit({ type: 'ran', step: step.name, key: keyString, exitCode: 0, durationMs: ranMs })
      if (hold.cacheOff) return keep(ownEnv)

      const capAt = performance.now()
      await normalizeUpperRoot(runDir)
      let layer: LayerInfo
      try {
        layer = await this.#store.commit(`${runDir}/u`, {
          signal: opts.signal,
          onProgress: (p) => emit({ type: 'capture-progress', step: step.name, unit: p.type, done: p.done, total: p.total })
        })
      } catch (err) {
        // The cache never fails a build: the step ran, and its changes stay mounted for the rest of this run, uncached.
        if (opts.signal?.aborted === true || !existsSync(`${runDir}/u`)) throw err
        this.#log.info({ err, step: step.name, key: keyString }, 'capture failed: the step ran, its result is not cached')
        emit({ type: 'capture-failed', step: step.name, key: keyString, error: err as Error })
        if (isDiskFull(err)) this.#cacheOff(hold, step.name, err, emit)
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
          producer: this.#identity.peerId,
          scope: this.#scope,
          epoch: this.#policy.epoch
        }
        await this.#store.putRecord(recordKey(key, this.#scope), signRecord(record, this.#identity))
        await this.#remember(lastId, key, bytes)
      } catch (err) {
        // Committed but not recorded (a full index): the layer serves the rest of this run, and nothing finds it later.
        if (opts.signal?.aborted === true) throw err
        this.#log.info({ err, step: step.name, key: key.toString() }, 'recording the capture failed: the step ran, its result is not cached')
        emit({ type: 'capture-failed', step: step.name, key: key.toString(), error: err as Error })
        if (isDiskFull(err)) this.#cacheOff(hold, step.name, err, emit)
        chain.parent = key
        chain.layers.unshift(layer.path)
        chain.envLines.push(...ownEnv)
        return { name: step.name, key: key.toString(), layer: '', status: 'ran', size: 0, env: ownEnv, durationMs: performance.now() - t0 }
      }
      const capMs = performance.now() - capAt
      emit({ type: 'captured', step: step.name, key: key.toString(), layer: layer.root.toString(), size: layer.size, entries: layer.entries, durationMs: capMs })
      this.#log.info({ step: step.name, key: key.toString(), layer: layer.root.toString(), ranMs, capMs }, 'captured')

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

  /** Copies the outputs of the step just done (the top of `chain`) into the host workspace; a problem fails the step. */
  async #deliver (chain: Chain, step: StepSpec, places: OutputPlaces, opts: RunOptions): Promise<void> {
    const t0 = performance.now()
    try {
      const view = new LayeredView(chain.layers, chain.base.kind === 'host' ? '/' : chain.base.path)
      const done = await deliverOutputs(step.name, view, places, step.outputs ?? [], { signal: opts.signal, log: this.#log, mask: this.#dataDir })
      opts.onEvent?.({ type: 'outputs', step: step.name, paths: done.paths, entries: done.entries, bytes: done.bytes, durationMs: performance.now() - t0 })
    } catch (err) {
      const e = opts.signal?.aborted === true ? new StepCancelledError(step.name, { cause: err }) : err as Error
      opts.onEvent?.({ type: 'failed', step: step.name, key: chain.parent?.toString(), reason: e instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: e })
      throw e
    }
  }

  /** Writes the run's changes (every layer of the chain merged) into `dir`. */
  async #export (chain: Chain, last: string, dir: string, opts: RunOptions): Promise<void> {
    const t0 = performance.now()
    const done = await exportLayers(chain.layers, dir, { signal: opts.signal })
    this.#log.info({ dir, entries: done.entries, bytes: done.bytes }, 'exported the run\'s changes')
    opts.onEvent?.({ type: 'exported', step: last, dir, entries: done.entries, bytes: done.bytes, durationMs: performance.now() - t0 })
  }

  /** A scratch dir for a step: on the data dir's filesystem while caching is on; on a spill tmpfs once that filesystem is full. */
  async #scratch (hold: Hold, step: string, lowers: readonly string[], base: string, emit: (e: RunnerEvent) => void): Promise<Scratch> {
    if (!hold.cacheOff) {
      try {
        return await makeScratch(`${this.#dataDir}/runner/run`, lowers, base)
      } catch (err) {
        if (!isDiskFull(err)) throw err
        this.#cacheOff(hold, step, err, emit)
      }
    }
    hold.spill ??= await mountSpill(this.#log)
    return await makeScratch(hold.spill.dir, lowers, base)
  }

  /** Turns caching off for the rest of the run, once, and says so. */
  #cacheOff (hold: Hold, step: string, cause: unknown, emit: (e: RunnerEvent) => void): void {
    if (hold.cacheOff) return
    hold.cacheOff = true
    const error = cause instanceof DiskFullError ? cause : new DiskFullError(this.#dataDir, { cause })
    this.#log.info({ err: error, step }, 'caching is off for the rest of the run')
    emit({ type: 'cache-off', step, error })
  }

  /** Asks the fleet for `key`; any failure is a miss (the step runs), never an error. */
  async #fromFleet (step: string, key: CID, opts: RunOptions): Promise<{ providers: number, bytes: number } | undefined> {
    try {
      const got = await this.#remote!.resolve(key.toString(), { signal: opts.signal, scopes: this.#policy.scopes })
      this.#log.debug({ step, key: key.toString(), providers: got.providers, bytes: got.bytes, ms: got.durationMs }, 'fetched from peers')
      return { providers: got.providers, bytes: got.bytes }
    } catch (err) {
      // A cancel surfaces when the step would run: the run dir and events are handled there.
      this.#log.info({ err, step, key: key.toString() }, 'not in the fleet: running the step')
      return undefined
    }
  }

  /** Keeps the descriptor and points this step's "last used" at it, for why(). */
  async #remember (lastId: string, key: CID, descriptorBytes: Uint8Array): Promise<void> {
    await this.#store.putRecord(descriptorKey(key), descriptorBytes)
    await this.#store.putRecord(lastKey(lastId), Buffer.from(key.toString()))
  }
}

/**
 * What a run holds until it ends: a lease on its layers, the run dirs of steps whose
 * result was not captured (mounted as lower dirs), and once the data dir's filesystem
 * is full, caching off and the scratch space used instead.
 */
interface Hold {
  lease: Lease
  dirs: Array<{ dir: string, fd: number }>
  cacheOff: boolean
  spill?: Spill
}

async function dropHold (hold: Hold): Promise<void> {
  hold.lease.release()
  try {
    for (const { dir, fd } of hold.dirs) {
      closeSync(fd)
      await rm(dir, { recursive: true, force: true })
    }
  } finally {
    await hold.spill?.release()
  }
}

/** Identifies "this step of this pipeline" across runs, for why(). */
function chainId (file: string | undefined, step: string): string {
  return createHash('sha256').update(`strata/last/v1\0${file ?? ''}\0${step}`).digest('hex').slice(0, 32)
}

function sameBase (a: BaseIdentity, b: BaseIdentity): boolean {
  if (a.kind !== b.kind || a.id !== b.id) return false
  if (a.kind === 'host' && b.kind === 'host') return a.arch === b.arch && Buffer.from(a.osRelease).equals(Buffer.from(b.osRelease))
  if (a.kind === 'dir' && b.kind === 'dir') return Buffer.from(a.digest).equals(Buffer.from(b.digest))
  return false
}
