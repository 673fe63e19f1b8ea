import { StrataError } from '@strata/errors'

/** Base of every error this package throws; callers branch on `code`, never on the message. */
export class RunnerError extends StrataError {
  override name = 'RunnerError'
}

/** Where in strata.yml a problem is: 1-based line and column. */
export interface SourcePosition {
  file: string
  line: number
  column: number
}

/** Base of the strata.yml errors: each names the file, line and column. */
export class PipelineError extends RunnerError {
  override name = 'PipelineError'
  readonly file: string
  readonly line: number
  readonly column: number
  /** The problem without the position prefix. */
  readonly reason: string
  constructor (code: string, at: SourcePosition, reason: string, opts?: { cause?: unknown }) {
    super(code, `${at.file}:${at.line}:${at.column}: ${reason}`, opts)
    this.file = at.file
    this.line = at.line
    this.column = at.column
    this.reason = reason
  }
}

/** strata.yml could not be read at all. */
export class PipelineReadError extends RunnerError {
  override name = 'PipelineReadError'
  readonly file: string
  constructor (file: string, opts?: { cause?: unknown }) {
    super('ERR_PIPELINE_READ', `cannot read ${file}: ${(opts?.cause as Error | undefined)?.message ?? 'unknown error'}`, opts)
    this.file = file
  }
}

/** strata.yml is larger than the limit (PIPELINE_LIMITS.bytes); nothing of it is parsed. */
export class PipelineTooLargeError extends RunnerError {
  override name = 'PipelineTooLargeError'
  readonly file: string
  readonly limit: number
  constructor (file: string, size: number, limit: number) {
    super('ERR_PIPELINE_TOO_LARGE', `${file} is ${size > limit + 1 ? `${size} bytes` : 'larger than the limit'}: strata.yml may be at most ${limit} bytes (move long scripts into files in the checkout)`)
    this.file = file
    this.limit = limit
  }
}

/** strata.yml is not valid UTF-8: the position is that of the first bad byte. */
export class PipelineEncodingError extends PipelineError {
  override name = 'PipelineEncodingError'
  readonly byte: number
  constructor (at: SourcePosition, byte: number) {
    super('ERR_PIPELINE_ENCODING', at, `byte 0x${byte.toString(16).padStart(2, '0').toUpperCase()} is not valid UTF-8 here; strata.yml must be UTF-8`)
    this.byte = byte
  }
}

/** Which bound a PipelineLimitError names. */
export type PipelineLimit = 'steps' | 'layers' | 'env' | 'inputs' | 'outputs' | 'secrets'

/**
 * A bound on what strata.yml may declare (PIPELINE_LIMITS: steps, layers below a step, env or inputs entries)
 * is exceeded; the position is the first entry past it (for `layers`: the step's `use`, or the step).
 */
export class PipelineLimitError extends PipelineError {
  override name = 'PipelineLimitError'
  readonly limit: PipelineLimit
  readonly max: number
  constructor (at: SourcePosition, limit: PipelineLimit, max: number, reason: string) {
    super('ERR_PIPELINE_LIMIT', at, reason)
    this.limit = limit
    this.max = max
  }
}

/** Not valid YAML (including duplicate keys in one mapping and multiple documents). */
export class PipelineSyntaxError extends PipelineError {
  override name = 'PipelineSyntaxError'
  constructor (at: SourcePosition, reason: string, opts?: { cause?: unknown }) {
    super('ERR_PIPELINE_SYNTAX', at, reason, opts)
  }
}

/** A key strata does not know (a typo would otherwise be silently ignored). */
export class PipelineUnknownKeyError extends PipelineError {
  override name = 'PipelineUnknownKeyError'
  readonly key: string
  constructor (at: SourcePosition, key: string, where: string, allowed: readonly string[]) {
    super('ERR_PIPELINE_UNKNOWN_KEY', at, `unknown key "${key}" in ${where} (allowed: ${allowed.join(', ')})`)
    this.key = key
  }
}

/** A value of the wrong YAML type (a list where a string is expected, ...). */
export class PipelineWrongTypeError extends PipelineError {
  override name = 'PipelineWrongTypeError'
  constructor (at: SourcePosition, what: string, expected: string, found: string) {
    super('ERR_PIPELINE_WRONG_TYPE', at, `${what} must be ${expected}, found ${found}`)
  }
}

/** A required field is absent. */
export class PipelineMissingFieldError extends PipelineError {
  override name = 'PipelineMissingFieldError'
  readonly field: string
  constructor (at: SourcePosition, field: string, where: string) {
    super('ERR_PIPELINE_MISSING_FIELD', at, `${where} has no "${field}"`)
    this.field = field
  }
}

/** Two steps share a name (names key `why` and the status lines). */
export class PipelineDuplicateStepError extends PipelineError {
  override name = 'PipelineDuplicateStepError'
  readonly step: string
  constructor (at: SourcePosition, step: string, first: SourcePosition) {
    super('ERR_PIPELINE_DUPLICATE_STEP', at, `a step named "${step}" is already defined at line ${first.line}, column ${first.column}`)
    this.step = step
  }
}

/** A step's `use` names no step of the file; `suggestion` is the closest name, when one is close. */
export class PipelineUnknownStepError extends PipelineError {
  override name = 'PipelineUnknownStepError'
  readonly step: string
  readonly use: string
  readonly suggestion: string | undefined
  constructor (at: SourcePosition, step: string, use: string, suggestion?: string) {
    super('ERR_PIPELINE_UNKNOWN_STEP', at, `step "${step}" uses "${use}", which is not a step of this file${suggestion !== undefined ? `; did you mean "${suggestion}"?` : ''}`)
    this.step = step
    this.use = use
    this.suggestion = suggestion
  }
}

/** A step names itself in its `use`. */
export class PipelineSelfUseError extends PipelineError {
  override name = 'PipelineSelfUseError'
  readonly step: string
  constructor (at: SourcePosition, step: string) {
    super('ERR_PIPELINE_SELF_USE', at, `step "${step}" uses itself: "use" names the steps it builds on`)
    this.step = step
  }
}

/** A step names another twice in one `use`. */
export class PipelineDuplicateUseError extends PipelineError {
  override name = 'PipelineDuplicateUseError'
  readonly step: string
  readonly use: string
  constructor (at: SourcePosition, step: string, use: string, first: SourcePosition) {
    super('ERR_PIPELINE_DUPLICATE_USE', at, `step "${step}" uses "${use}" twice (first at line ${first.line}, column ${first.column})`)
    this.step = step
    this.use = use
  }
}

/**
 * The steps' `use` (or their default, the step before) make a cycle; `cycle` lists it
 * in the direction of `use`, its first step again last (`a -> b -> a`: a uses b, b uses a).
 */
export class PipelineCycleError extends PipelineError {
  override name = 'PipelineCycleError'
  readonly cycle: readonly string[]
  constructor (at: SourcePosition, cycle: readonly string[], note?: string) {
    super('ERR_PIPELINE_CYCLE', at, `"use" makes a cycle: ${cycle.join(' -> ')} (each uses the next)${note !== undefined ? `; ${note}` : ''}`)
    this.cycle = cycle
  }
}

/** The type is right but the value is not allowed (a bad timeout, step or env name, ...). */
export class PipelineInvalidValueError extends PipelineError {
  override name = 'PipelineInvalidValueError'
  constructor (at: SourcePosition, reason: string) {
    super('ERR_PIPELINE_INVALID_VALUE', at, reason)
  }
}

/** A declared input (a plain path, not a glob) does not exist in the step's view. */
export class InputNotFoundError extends RunnerError {
  override name = 'InputNotFoundError'
  readonly step: string
  readonly path: string
  constructor (step: string, path: string, opts?: { cause?: unknown }) {
    super('ERR_INPUT_NOT_FOUND', `step "${step}": input ${path} does not exist in the filesystem the step sees`, opts)
    this.step = step
    this.path = path
  }
}

/** The workspace (the checkout steps see at the workspace path) cannot be used. */
export class WorkspaceError extends RunnerError {
  override name = 'WorkspaceError'
  readonly dir: string
  constructor (dir: string, problem: string, opts?: { cause?: unknown }) {
    super('ERR_WORKSPACE', `workspace ${dir}: ${problem}`, opts)
    this.dir = dir
  }
}

/** The declared inputs exceed a configured bound (file count, entries walked, or bytes to hash). */
export class InputLimitError extends RunnerError {
  override name = 'InputLimitError'
  readonly step: string
  /** Which bound: `files` and `walked` (10 x files) move with maxFiles, `bytes` with maxBytes. */
  readonly limit: 'files' | 'walked' | 'bytes'
  readonly max: number
  constructor (step: string, limit: 'files' | 'walked' | 'bytes', max: number) {
    const what = limit === 'files'
      ? `inputs exceed ${max} files`
      : limit === 'walked' ? `finding the inputs walked past ${max} entries (10 x the file limit)` : `inputs exceed ${max} bytes`
    const raise = limit === 'bytes' ? '--max-input-bytes (inputLimits.maxBytes)' : '--max-input-files (inputLimits.maxFiles)'
    super('ERR_INPUT_LIMIT', `step "${step}": ${what}; narrow the inputs or raise ${raise}`)
    this.step = step
    this.limit = limit
    this.max = max
  }
}

/** Resolving an input met a symlink loop or a non-directory in the middle of a path. */
export class InputResolveError extends RunnerError {
  override name = 'InputResolveError'
  readonly path: string
  constructor (path: string, reason: string) {
    super('ERR_INPUT_RESOLVE', `cannot resolve input ${path}: ${reason}`)
    this.path = path
  }
}

/** The base (host or rootfs directory) cannot be used. */
export class BaseError extends RunnerError {
  override name = 'BaseError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_BASE', message, opts)
  }
}

/** The step exited non-zero (or was killed by a signal it did not cause us to send). */
export class StepFailedError extends RunnerError {
  override name = 'StepFailedError'
  readonly step: string
  readonly exitCode: number
  readonly signal: string | null
  constructor (step: string, exitCode: number, signal: string | null, opts?: { cause?: unknown }) {
    super('ERR_STEP_FAILED', signal !== null
      ? `step "${step}" was killed by ${signal}`
      : `step "${step}" failed with exit code ${exitCode}`, opts)
    this.step = step
    this.exitCode = exitCode
    this.signal = signal
  }
}

/** The step ran past its timeout and was killed. */
export class StepTimeoutError extends RunnerError {
  override name = 'StepTimeoutError'
  readonly step: string
  readonly timeoutMs: number
  /** What a CLI should exit with (124, as timeout(1)). */
  readonly exitCode = 124
  constructor (step: string, timeoutMs: number) {
    super('ERR_STEP_TIMEOUT', `step "${step}" timed out after ${formatMs(timeoutMs)} and was killed`)
    this.step = step
    this.timeoutMs = timeoutMs
  }
}

/** The caller's signal aborted the step; its processes were killed and nothing was committed. */
export class StepCancelledError extends RunnerError {
  override name = 'StepCancelledError'
  readonly step: string
  /** What a CLI should exit with (130, as after SIGINT). */
  readonly exitCode = 130
  constructor (step: string, opts?: { cause?: unknown }) {
    super('ERR_STEP_CANCELLED', `step "${step}" was cancelled`, opts)
    this.step = step
  }
}

/** The sandbox could not be set up (a mount failed, no /bin/sh in the view, ...). */
export class SandboxError extends RunnerError {
  override name = 'SandboxError'
  readonly step: string
  readonly detail: string
  constructor (step: string, detail: string, opts?: { cause?: unknown }) {
    super('ERR_SANDBOX', `step "${step}": cannot set up the sandbox: ${detail}`, opts)
    this.step = step
    this.detail = detail
  }
}

/** A line the step appended to $STRATA_ENV is not NAME=value, or it (or the environment it makes) is too large to exec. */
export class StrataEnvError extends RunnerError {
  override name = 'StrataEnvError'
  readonly step: string
  /** The variable at fault, when one is. */
  readonly variable: string | undefined
  constructor (step: string, reason: string, variable?: string) {
    super('ERR_STRATA_ENV', `step "${step}": $STRATA_ENV: ${reason}`)
    this.step = step
    this.variable = variable
  }
}

/** The filesystem of the data dir is full (ENOSPC, EDQUOT): caching is off for the rest of the run. */
export class DiskFullError extends RunnerError {
  override name = 'DiskFullError'
  /** The data dir whose filesystem is full. */
  readonly path: string
  constructor (path: string, opts?: { cause?: unknown }) {
    super('ERR_DISK_FULL', `the filesystem of ${path} is full`, opts)
    this.path = path
  }
}

/** No scratch space for a step: the data dir's filesystem is full and none could be had elsewhere. */
export class ScratchError extends RunnerError {
  override name = 'ScratchError'
  constructor (detail: string, opts?: { cause?: unknown }) {
    super('ERR_SCRATCH', `no scratch space for the step: ${detail}`, opts)
  }
}

/** More layers below a step than OverlayFS stacks (500 lower dirs). */
export class ChainTooLongError extends RunnerError {
  override name = 'ChainTooLongError'
  constructor (layers: number, max: number) {
    super('ERR_CHAIN_TOO_LONG', `${layers} layers below a step; OverlayFS stacks at most ${max}`)
  }
}

/** A parent key given to exec() has no usable record or layer here. */
export class ParentNotFoundError extends RunnerError {
  override name = 'ParentNotFoundError'
  readonly key: string
  constructor (key: string, reason: string) {
    super('ERR_PARENT_NOT_FOUND', `parent ${key}: ${reason}`)
    this.key = key
  }
}

/** exec() was given a base that is not the one the parent chain was built on. */
export class BaseMismatchError extends RunnerError {
  override name = 'BaseMismatchError'
  constructor (key: string) {
    super('ERR_BASE_MISMATCH', `parent ${key} was built on another base than the one given`)
  }
}

/** why() was asked about a step the pipeline does not have. */
export class StepNotFoundError extends RunnerError {
  override name = 'StepNotFoundError'
  readonly step: string
  constructor (step: string, known: readonly string[]) {
    super('ERR_STEP_NOT_FOUND', `no step named "${step}" (steps: ${known.join(', ')})`)
    this.step = step
  }
}

export function formatMs (ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`
  return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`
}

/** A declared output is not in the step's filesystem after it ran (or in the layer it hit): likely a broken build. */
export class OutputNotFoundError extends RunnerError {
  override name = 'OutputNotFoundError'
  readonly step: string
  readonly path: string
  constructor (step: string, path: string) {
    super('ERR_OUTPUT_NOT_FOUND', `step "${step}": output ${path} does not exist in the step's filesystem after it ran; check the build, or remove it from "outputs"`)
    this.step = step
    this.path = path
  }
}

/** An output would lead out of the workspace (a symlink) or be written through a symlink on the host. */
export class OutputUnsafeError extends RunnerError {
  override name = 'OutputUnsafeError'
  readonly step: string
  readonly path: string
  readonly reason: string
  constructor (step: string, path: string, reason: string) {
    super('ERR_OUTPUT_UNSAFE', `step "${step}": output ${path} is not copied: ${reason}`)
    this.step = step
    this.path = path
    this.reason = reason
  }
}

/** `export` names a directory that cannot take the export: not empty, not a directory, or not writable. */
export class ExportDirError extends RunnerError {
  override name = 'ExportDirError'
  readonly dir: string
  constructor (dir: string, reason: string, opts?: { cause?: unknown }) {
    super('ERR_EXPORT_DIR', `cannot export to ${dir}: ${reason}`, opts)
    this.dir = dir
  }
}
