import { resolve } from 'node:path'
import { checkEpoch, checkScope, loadWriterKey, parseWriter } from '@strata/records'
import { CID } from 'multiformats/cid'
import { createRunner, loadPipeline, MAX_JOBS, MAX_TMP_SIZE, parseDuration, parseSize, renderDot, renderGraph } from '@strata/runner'
import type { EnvDecl, ExecStep, InputLimits, RunnerEvent, RunnerInit, RunResult } from '@strata/runner'
import type { Command, CommandContext } from '../context.ts'
import { count, dataDirOf, parseCommandArgs, UsageError } from '../context.ts'
import type { ArgValues } from '../context.ts'
// The client alone: importing the whole daemon package would load libp2p on every run.
import { connectDaemon } from '@strata/daemon/client'
import { openStoreFor, WAIT_USAGE, waitFlag, waitTimeoutOf } from '../open.ts'
import { sizeOption } from './gc.ts'
import { reporter, seconds } from '../progress.ts'
import { GRAPH_USAGE, graphArgv, graphFlag, graphFormat, graphStates } from './graph.ts'

const jsonFlag = { json: { type: 'boolean', default: false } } as const
/** Where records are written and read: flags, else STRATA_SCOPE / STRATA_READ_SCOPES / STRATA_EPOCH. */
const trustFlags = {
  scope: { type: 'string' },
  'read-scope': { type: 'string', multiple: true },
  epoch: { type: 'string' },
  'writer-key': { type: 'string' },
  'trusted-writer': { type: 'string', multiple: true },
  ...waitFlag
} as const
const TRUST_USAGE = `[--scope S] [--read-scope S]... [--epoch N] [--writer-key FILE] [--trusted-writer NAME-N:KEY[@SCOPES]]... ${WAIT_USAGE}`
/** Where the writer key is read from when --writer-key is not given; never passed on to a step. */
const WRITER_KEY_ENV = 'STRATA_WRITER_KEY_FILE'

type TrustOptions = Pick<RunnerInit, 'scope' | 'readScopes' | 'epoch' | 'trustedPeers'> & { writerKeyFile?: string, waitMs?: number }
/** Bounds on what a step's inputs make the runner read; ERR_INPUT_LIMIT names these flags. */
const limitFlags = {
  'max-input-files': { type: 'string' },
  'max-input-bytes': { type: 'string' }
} as const
const LIMIT_USAGE = '[--max-input-files N] [--max-input-bytes SIZE]'

/** The runner's input limits from --max-input-files / --max-input-bytes; absent flags keep the runner's defaults. */
export function inputLimitOptions (values: ArgValues): Pick<RunnerInit, 'inputLimits'> {
  const limits: InputLimits = {}
  const files = values['max-input-files']
  if (typeof files === 'string') {
    if (!/^\d+$/.test(files) || !Number.isSafeInteger(Number(files)) || Number(files) < 1) throw new UsageError(`--max-input-files: ${JSON.stringify(files)} is not a whole number of files >= 1`)
    limits.maxFiles = Number(files)
  }
  const bytes = sizeOption(values, 'max-input-bytes')
  if (bytes !== undefined) limits.maxBytes = bytes
  return Object.keys(limits).length > 0 ? { inputLimits: limits } : {}
}

/** The runner's scope options from flags, then the environment; bad values are usage errors. */
export function trustOptions (values: ArgValues, env: NodeJS.ProcessEnv = process.env): TrustOptions {
  const out: TrustOptions = {}
  try {
    const scope = typeof values.scope === 'string' ? values.scope : env.STRATA_SCOPE
    if (scope !== undefined && scope !== '') out.scope = checkScope(scope)
    const flagged = Array.isArray(values['read-scope']) ? values['read-scope'].filter((x): x is string => typeof x === 'string') : []
    const read = flagged.length > 0 ? flagged : (env.STRATA_READ_SCOPES ?? '').split(/[\s,]+/).filter((x) => x !== '')
    if (read.length > 0) out.readScopes = read.map(checkScope)
    const epoch = typeof values.epoch === 'string' ? values.epoch : env.STRATA_EPOCH
    if (epoch !== undefined && epoch !== '') out.epoch = checkEpoch(/^\d+$/.test(epoch) ? Number(epoch) : epoch)
    const keyFile = typeof values['writer-key'] === 'string' ? values['writer-key'] : env[WRITER_KEY_ENV]
    if (keyFile !== undefined && keyFile !== '') out.writerKeyFile = keyFile
    const writers = Array.isArray(values['trusted-writer']) ? values['trusted-writer'].filter((x): x is string => typeof x === 'string') : []
    for (const w of writers) parseWriter(w)
    if (writers.length > 0) out.trustedPeers = writers
    // A run waits for its turns with the store for as long as that takes, unless told otherwise.
    out.waitMs = waitTimeoutOf(values, Infinity)
  } catch (err) {
    if (err instanceof UsageError) throw err
    throw new UsageError((err as Error).message)
  }
  return out
}

/** How long a step that misses waits while another process or peer builds its key (RunOptions.claimWaitMs). */
const claimFlags = { 'claim-wait': { type: 'string' } } as const
const CLAIM_USAGE = '[--claim-wait DURATION]'

export function claimOptions (values: ArgValues): { claimWaitMs?: number } {
  const text = values['claim-wait']
  if (typeof text !== 'string') return {}
  const ms = parseDuration(text)
  if (ms === undefined) throw new UsageError(`--claim-wait: ${JSON.stringify(text)} is not a duration (e.g. 0s, 90s, 10m, 1h30m)`)
  return { claimWaitMs: ms }
}

/** `--tmp-size`, else STRATA_TMP_SIZE: what each step's /tmp may hold when strata.yml says nothing. */
const sandboxFlags = { 'tmp-size': { type: 'string' } } as const
const SANDBOX_USAGE = '[--tmp-size SIZE]'

export function sandboxOptions (values: ArgValues, env: NodeJS.ProcessEnv = process.env): Pick<RunnerInit, 'tmpSize'> {
  const text = typeof values['tmp-size'] === 'string' ? values['tmp-size'] : env.STRATA_TMP_SIZE
  if (text === undefined || text === '') return {}
  const size = parseSize(text)
  if (size === undefined || size < 4096 || size > MAX_TMP_SIZE) throw new UsageError(`--tmp-size ${JSON.stringify(text)} is not a size between 4k and 4t (e.g. 4g, 512m)`)
  return { tmpSize: size }
}

function both (a: (e: RunnerEvent) => void, b: (e: RunnerEvent) => void): (e: RunnerEvent) => void {
  return (e) => {
    a(e)
    b(e)
  }
}

/** --epoch / STRATA_EPOCH names another epoch than the daemon's, which would refuse what the step records. */
export class EpochMismatchError extends Error {
  override name = 'EpochMismatchError'
  readonly code = 'ERR_EPOCH_MISMATCH'
}

/** The exit code for a runner failure: the step's own, 124 for a timeout, 130 for a cancel. */
function exitCodeOf (err: unknown): number | undefined {
  const e = err as { code?: string, exitCode?: number }
  if (e.code === 'ERR_STEP_FAILED' || e.code === 'ERR_STEP_TIMEOUT' || e.code === 'ERR_STEP_CANCELLED') {
    return typeof e.exitCode === 'number' && e.exitCode > 0 ? e.exitCode : 1
  }
  return undefined
}

/** Through the daemon when one answers on the data dir's socket (it holds the store), else on the store itself. */
async function withRunner<T> (ctx: CommandContext, dir: string, json: boolean, opts: TrustOptions & Pick<RunnerInit, 'inputLimits' | 'tmpSize'>, fn: (runner: Awaited<ReturnType<typeof createRunner>>, observe: (e: RunnerEvent) => void) => Promise<T>): Promise<T> {
  const { writerKeyFile, waitMs, ...trust } = opts
  // Read before anything runs: no step can see or change the file's content or its path.
  const writerKey = writerKeyFile !== undefined ? await loadWriterKey(writerKeyFile, { signal: ctx.signal }) : undefined
  const env = { ...process.env }
  delete env[WRITER_KEY_ENV]
  const daemon = await connectDaemon(dir, { signal: ctx.signal })
  // The daemon re-verifies what the runner writes in its own epoch: two epochs would refuse each other's records.
  if (daemon !== undefined && trust.epoch !== undefined && trust.epoch !== daemon.epoch) {
    await daemon.close()
    throw new EpochMismatchError(`epoch ${trust.epoch} differs from the daemon's (${daemon.epoch}); leave --epoch / STRATA_EPOCH unset to use the daemon's`)
  }
  // Claims are trusted like records: signed by the same writer key.
  daemon?.signClaimsWith(writerKey)
  const store = daemon ?? await openStoreFor(ctx, dir, { 'wait-timeout': undefined }, waitMs)
  const reports = new Set<Promise<void>>()
  try {
    // With --json, stdout carries events only: step output goes to stderr.
    const output = json ? { stdout: ctx.stderr, stderr: ctx.stderr } : undefined
    // The fleet's secret salt comes from the environment only: a flag would show in ps, strata.yml is in the repo.
    const salt = process.env.STRATA_SALT
    const runner = await createRunner({
      store,
      logger: ctx.logger,
      ...trust,
      env,
      ...(writerKey !== undefined ? { writerKey, hide: [writerKeyFile!] } : {}),
      ...(salt !== undefined && salt !== '' ? { salt } : {}),
      ...(output !== undefined ? { output } : {}),
      ...(daemon !== undefined ? { remote: daemon } : {})
    })
    // The daemon counts hits by source and misses for its metrics.
    const observe = (e: RunnerEvent): void => {
      if (daemon === undefined || (e.type !== 'hit' && e.type !== 'miss')) return
      const sent: Promise<void> = daemon.report(e.type === 'hit' ? e.source : 'miss')
        .catch((err: unknown) => ctx.logger.debug({ err }, 'could not report to the daemon'))
        .finally(() => reports.delete(sent))
      reports.add(sent)
    }
    return await fn(runner, observe)
  } finally {
    // Closing the client drops requests in flight: the last step's report would be lost.
    await Promise.allSettled([...reports])
    await store.close()
  }
}

/** Steps need OverlayFS and mount namespaces: as another user, say so in one line instead of an EPERM from deep inside. */
function notRoot (ctx: CommandContext, command: string): boolean {
  if (process.getuid?.() === 0) return false
  ctx.stderr.write(`strata ${command} needs root (OverlayFS, mount namespaces)\n`)
  return true
}

/** `--jobs N` / `-j N`: steps run at once at most; absent, the runner's default (the number of CPUs). */
function jobsOf (values: ArgValues): number | undefined {
  const v = values.jobs
  if (typeof v !== 'string') return undefined
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_JOBS) throw new UsageError(`--jobs: ${JSON.stringify(v)} is not a whole number of steps from 1 to ${MAX_JOBS}`)
  return Number(v)
}

/** The run's last line: steps, hits, wall time, and with steps run at once, the critical path and the time that saved. */
export function summary (result: Pick<RunResult, 'steps' | 'durationMs' | 'criticalPath' | 'stepsMs'>): string {
  let text = `strata: ${count(result.steps.length, 'step')}, ${result.steps.filter((s) => s.status === 'hit').length} cached, in ${seconds(result.durationMs)}`
  const saved = result.stepsMs - result.durationMs
  if (result.criticalPath.steps.length > 1 && saved >= 100) {
    text += `; critical path ${result.criticalPath.steps.join(' → ')} (${seconds(result.criticalPath.durationMs)}), ${seconds(saved)} saved by running steps at once`
  }
  return text
}

export const run: Command = {
  name: 'run',
  summary: 'run the steps of strata.yml, mounting cached layers instead of re-running them',
  usage: `strata run [-f strata.yml] [--data-dir D] [-j|--jobs N] [-k|--keep-going] [--no-cache] [--export DIR] ${GRAPH_USAGE} ${CLAIM_USAGE} ${TRUST_USAGE} ${LIMIT_USAGE} ${SANDBOX_USAGE} [--json]`,
  async run (ctx) {
    const { values } = parseCommandArgs({ ...ctx, argv: graphArgv(ctx.argv) }, { ...jsonFlag, ...trustFlags, ...limitFlags, ...sandboxFlags, ...graphFlag, ...claimFlags, file: { type: 'string', short: 'f', default: 'strata.yml' }, 'no-cache': { type: 'boolean', default: false }, export: { type: 'string' }, jobs: { type: 'string', short: 'j' }, 'keep-going': { type: 'boolean', short: 'k', default: false } }, 0)
    const graph = graphFormat(values)
    // The graph runs nothing: like why, it needs no mounts.
    if (graph === undefined && notRoot(ctx, 'run')) return 1
    const json = values.json === true
    const jobs = jobsOf(values)
    const claim = claimOptions(values)
    const pipeline = await loadPipeline(resolve(values.file as string), { signal: ctx.signal })
    if (graph !== undefined) {
      const states = await withRunner(ctx, dataDirOf(values), false, { ...trustOptions(values), ...inputLimitOptions(values) }, async (runner) => await graphStates(runner, pipeline, ctx.signal))
      ctx.stdout.write(graph === 'dot' ? renderDot(pipeline, states) : renderGraph(pipeline, states))
      return 0
    }
    try {
      const result = await withRunner(ctx, dataDirOf(values), json, { ...trustOptions(values), ...inputLimitOptions(values), ...sandboxOptions(values) }, async (runner, observe) =>
        await runner.run(pipeline, {
          signal: ctx.signal,
          noCache: values['no-cache'] === true,
          keepGoing: values['keep-going'] === true,
          ...claim,
          ...(jobs !== undefined ? { jobs } : {}),
          ...(typeof values.export === 'string' ? { export: values.export } : {}),
          onEvent: both(reporter(ctx, json), observe)
        }))
      if (json) ctx.stdout.write(JSON.stringify({ type: 'done', steps: result.steps, env: result.env, durationMs: result.durationMs, criticalPath: result.criticalPath, stepsMs: result.stepsMs }) + '\n')
      else ctx.stderr.write(summary(result) + '\n')
      return 0
    } catch (err) {
      const code = exitCodeOf(err)
      if (code === undefined) throw err
      return code
    }
  }
}

export const exec: Command = {
  name: 'exec',
  summary: 'run one command as a cached step; prints its key last, to chain with --parent',
  usage: `strata exec --name NAME [--input GLOB]... [--env NAME[=VALUE]]... [--parent KEY] [--cwd DIR] [--timeout DURATION] [--no-cache] [--data-dir D] ${CLAIM_USAGE} ${TRUST_USAGE} ${LIMIT_USAGE} ${SANDBOX_USAGE} [--json] -- CMD...`,
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, {
      ...jsonFlag,
      ...trustFlags,
      ...limitFlags,
      ...sandboxFlags,
      ...claimFlags,
      name: { type: 'string' },
      input: { type: 'string', multiple: true },
      env: { type: 'string', multiple: true },
      parent: { type: 'string' },
      cwd: { type: 'string' },
      timeout: { type: 'string' },
      'no-cache': { type: 'boolean', default: false }
    }, 'any')
    if (typeof values.name !== 'string') throw new UsageError('--name is required')
    if (notRoot(ctx, 'exec')) return 1
    if (positionals.length === 0) throw new UsageError('no command given after --')
    const json = values.json === true
    const env: EnvDecl[] = ((values.env ?? []) as string[]).map((decl) => {
      const eq = decl.indexOf('=')
      return eq < 0 ? { name: decl } : { name: decl.slice(0, eq), value: decl.slice(eq + 1) }
    })
    // The command is one shell script: quote each word so that `-- sh -c "a b"` means what it says.
    const script = positionals.length === 1 ? positionals[0]! : positionals.map(shellQuote).join(' ')
    const step: ExecStep = { name: values.name, run: script, env, inputs: (values.input ?? []) as string[], cwd: resolve((values.cwd as string | undefined) ?? process.cwd()) }
    if (typeof values.parent === 'string') {
      try {
        step.parent = CID.parse(values.parent).toString()
      } catch (err) {
        throw new UsageError(`--parent: ${JSON.stringify(values.parent)} is not a key (strata exec prints one)`, { cause: err })
      }
    }
    if (values['no-cache'] === true) step.cache = false
    if (typeof values.timeout === 'string') {
      const ms = parseDuration(values.timeout)
      if (ms === undefined || ms <= 0) throw new UsageError(`--timeout: ${JSON.stringify(values.timeout)} is not a duration (e.g. 90s, 10m, 1h30m)`)
      step.timeoutMs = ms
    }
    const claim = claimOptions(values)
    let started = false
    const onStart = (e: RunnerEvent): void => {
      if (e.type === 'start') started = true
    }
    try {
      const result = await withRunner(ctx, dataDirOf(values), json, { ...trustOptions(values), ...inputLimitOptions(values), ...sandboxOptions(values) }, async (runner, observe) => {
        try {
          return await runner.exec(step, { signal: ctx.signal, ...claim, onEvent: both(both(reporter(ctx, json), observe), onStart) })
        } catch (err) {
          // The runner refuses its arguments (a step or variable name) with a TypeError before the step starts.
          if (err instanceof TypeError && !started) throw new UsageError(err.message, { cause: err })
          throw err
        }
      })
      if (json) ctx.stdout.write(JSON.stringify({ type: 'done', ...result }) + '\n')
      else ctx.stdout.write(result.key + '\n')
      return 0
    } catch (err) {
      const code = exitCodeOf(err)
      if (code === undefined) throw err
      return code
    }
  }
}

export const why: Command = {
  name: 'why',
  summary: 'say which part of a step\'s cache key changed since it last ran or hit',
  usage: `strata why STEP [-f strata.yml] [--data-dir D] ${TRUST_USAGE} ${LIMIT_USAGE} [--json]`,
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, { ...jsonFlag, ...trustFlags, ...limitFlags, file: { type: 'string', short: 'f', default: 'strata.yml' } }, 1)
    const pipeline = await loadPipeline(resolve(values.file as string), { signal: ctx.signal })
    const report = await withRunner(ctx, dataDirOf(values), false, { ...trustOptions(values), ...inputLimitOptions(values) }, async (runner) => await runner.why(pipeline, positionals[0]!, { signal: ctx.signal }))
    if (values.json === true) {
      ctx.stdout.write(JSON.stringify(report) + '\n')
      return 0
    }
    for (const s of report.steps) {
      const head = s.hit ? 'would HIT' : s.previousKey === null ? 'would MISS: never ran here' : s.expired !== undefined && s.changes.length === 0 ? 'would MISS: expired' : 'would MISS'
      ctx.stdout.write(`${s.name}: ${head}${s.approximate ? ' (approximate: a step below would run first)' : ''}\n`)
      for (const r of s.reasons) ctx.stdout.write(`  - ${r}\n`)
      for (const w of s.warnings) ctx.stdout.write(`  warning: ${w}\n`)
    }
    return 0
  }
}

function shellQuote (word: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`
}

