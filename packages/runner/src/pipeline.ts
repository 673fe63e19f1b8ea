import { open } from 'node:fs/promises'
import { dirname, isAbsolute, posix, resolve } from 'node:path'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { LineCounter, isMap, isScalar, isSeq, parseDocument, visit } from 'yaml'
import type { Node, Pair, YAMLMap } from 'yaml'
import {
  PipelineDuplicateStepError, PipelineEncodingError, PipelineInvalidValueError, PipelineLimitError, PipelineMissingFieldError,
  PipelineReadError, PipelineSyntaxError, PipelineTooLargeError, PipelineUnknownKeyError, PipelineWrongTypeError
} from './errors.ts'
import type { SourcePosition } from './errors.ts'
import { patternProblem } from './filter.ts'
import { MAX_LOWER_LAYERS } from './sandbox.ts'
import type { WorkspaceSpec } from './workspace.ts'
import { parseStepOptions } from './step-options.ts'
import { resolveUse } from './use.ts'
import type { UseDecl } from './use.ts'
import { describeNode as describe } from './yaml-words.ts'

/** The filesystem a pipeline starts from. */
export type BaseSpec =
  | { kind: 'host' }
  | { kind: 'dir', path: string }

/**
 * One declared environment variable. Without `value` it is taken from the
 * caller's environment when the key is computed (unset stays unset).
 */
export interface EnvDecl {
  name: string
  value?: string
}

export interface StepSpec {
  name: string
  /**
   * The steps whose filesystems and $STRATA_ENV this one builds on, merged in this order
   * (the last on top); empty: the base alone. The parser always fills it: without `use`
   * in strata.yml, the step before it (the first step: none).
   */
  use: string[]
  /** Shell script, run as `/bin/sh -e -c run`. */
  run: string
  /** Absolute working directory inside the step's view. */
  cwd: string
  env: EnvDecl[]
  /** Absolute paths or globs, read in the step's view (outside the workspace). */
  inputs: string[]
  /** Workspace globs (see filter.ts): the only workspace files the step sees and keys. Default: the whole workspace but .git. */
  filter?: string[]
  cache: boolean
  /** `cache: { ttl }`: a record older than this (by its `created`) is a miss, `expired`. */
  ttlMs?: number
  /** Paths relative to the workspace, copied to the host after the step ran or hit (outputs.ts). */
  outputs?: string[]
  /** Env names passed from the caller's environment to the step, in no key, record or log. */
  secrets?: string[]
  timeoutMs?: number
  /** Bytes the step's /tmp (and /dev/shm) may hold: the pipeline's `tmp-size`. Default: the runner's. */
  tmpSize?: number
  /** `reproducible`: SOURCE_DATE_EPOCH set for the step and captured mtimes clamped to it; default the pipeline's. */
  reproducible?: boolean
  /** Where the step is defined, for messages. */
  at?: SourcePosition
}

export interface Pipeline {
  /** Absolute path of strata.yml, when it came from a file. */
  file?: string
  base: BaseSpec
  baseId?: string
  salt?: string
  /** `tmp-size`: bytes each step's /tmp (and /dev/shm) may hold; copied into every step. */
  tmpSize?: number
  /** Top-level `reproducible`: the default of every step's (copied into the steps that do not set theirs). */
  reproducible?: boolean
  /** The checkout every step sees at `path`; absent only for text parsed without a file name and without `workspace:`. */
  workspace?: WorkspaceSpec
  steps: StepSpec[]
}

export interface ParseOptions {
  /** Name used in error messages and to resolve relative paths (its directory). Default `strata.yml` in the cwd. */
  file?: string
  /** Checked between validation stages; an aborted signal throws its reason. */
  signal?: AbortSignal
  /** Raise or lower the bounds (benchmarks, tests). Default PIPELINE_LIMITS. */
  limits?: Partial<PipelineLimits>
}

/** Bounds on what one strata.yml may declare; each is refused with a PipelineLimitError or PipelineTooLargeError. */
export interface PipelineLimits {
  /** Size of the file in bytes. */
  bytes: number
  /** Steps in the file. */
  steps: number
  /** Distinct steps below any one step (those it uses and theirs): each is a layer, and OverlayFS stacks at most MAX_LOWER_LAYERS. */
  layers: number
  /** Entries in one step's `env`. */
  env: number
  /** Entries in one step's `inputs`, and in its `filter`. */
  inputs: number
}

export const PIPELINE_LIMITS: Readonly<PipelineLimits> = Object.freeze({
  bytes: 1024 * 1024,
  steps: MAX_LOWER_LAYERS + 1,
  layers: MAX_LOWER_LAYERS,
  env: 1024,
  inputs: 1024
})

const TOP_KEYS = ['base', 'base-id', 'salt', 'tmp-size', 'reproducible', 'workspace', 'steps'] as const
const WORKSPACE_KEYS = ['dir', 'path'] as const
const STEP_KEYS = ['name', 'use', 'run', 'cwd', 'env', 'inputs', 'filter', 'cache', 'timeout', 'outputs', 'secrets', 'reproducible'] as const
/** Where the checkout is in every step's view unless strata.yml says otherwise. */
export const DEFAULT_WORKSPACE_PATH = '/workspace'
/** Mounted over by the sandbox after the workspace: a workspace there would be hidden. */
const RESERVED_PATHS = ['/proc', '/sys', '/dev', '/tmp']
const STEP_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
/** tmpfs takes any size; past a few TiB it is a typo, not a plan. */
export const MAX_TMP_SIZE = 2 ** 42

/**
 * Reads and validates a strata.yml. Nothing is run: a problem throws a PipelineError naming file, line and column.
 * The signal is checked while reading and between validation stages (the event loop gets a turn there).
 */
export async function loadPipeline (file: string, opts: { signal?: AbortSignal, limits?: Partial<PipelineLimits> } = {}): Promise<Pipeline> {
  const abs = resolve(file)
  const limits = { ...PIPELINE_LIMITS, ...opts.limits }
  opts.signal?.throwIfAborted()
  const bytes = await readBounded(abs, limits.bytes, opts.signal)
  const text = decodeUtf8(bytes, abs)
  const stages = validate(text, { ...opts, file: abs, limits, named: true })
  for (let r = stages.next(); ; r = stages.next()) {
    if (r.done === true) return r.value
    // A turn of the event loop between stages lets a SIGINT/SIGTERM handler abort the signal.
    await nextTurn()
  }
}

/** Validates strata.yml text; see loadPipeline. */
export function parsePipeline (text: string, opts: ParseOptions = {}): Pipeline {
  const limits = { ...PIPELINE_LIMITS, ...opts.limits }
  const file = resolve(opts.file ?? 'strata.yml')
  const size = Buffer.byteLength(text)
  if (size > limits.bytes) throw new PipelineTooLargeError(file, size, limits.bytes)
  const stages = validate(text, { ...opts, file, limits, named: opts.file !== undefined })
  for (let r = stages.next(); ; r = stages.next()) {
    if (r.done === true) return r.value
  }
}

/** Reads at most `max` bytes: a larger file (or a device that never ends) is refused without reading it all. */
async function readBounded (file: string, max: number, signal: AbortSignal | undefined): Promise<Uint8Array> {
  let handle
  try {
    handle = await open(file, 'r')
  } catch (err) {
    throw new PipelineReadError(file, { cause: err })
  }
  try {
    const buf = Buffer.allocUnsafe(max + 1)
    let n = 0
    for (;;) {
      signal?.throwIfAborted()
      let got: number
      try {
        got = (await handle.read(buf, n, buf.length - n, null)).bytesRead
      } catch (err) {
        throw new PipelineReadError(file, { cause: err })
      }
      if (got === 0) break
      n += got
      if (n > max) throw new PipelineTooLargeError(file, n, max)
    }
    return buf.subarray(0, n)
  } finally {
    await handle.close()
  }
}

/** UTF-8 or a PipelineEncodingError at the first bad byte: a replaced byte would run another command than the file's, under another file's key. */
function decodeUtf8 (bytes: Uint8Array, file: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    const bad = firstInvalidUtf8(bytes)
    let lineStart = 0
    let line = 1
    for (let i = 0; i < bad; i++) {
      if (bytes[i] === 0x0a) {
        line++
        lineStart = i + 1
      }
    }
    // Everything before the bad byte is valid: the column counts its characters, as for every other error.
    const column = new TextDecoder('utf-8').decode(bytes.subarray(lineStart, bad)).length + 1
    throw new PipelineEncodingError({ file, line, column }, bytes[bad] ?? 0)
  }
}

/** Offset of the first byte that does not begin or continue a well-formed UTF-8 sequence (RFC 3629). */
export function firstInvalidUtf8 (b: Uint8Array): number {
  let i = 0
  while (i < b.length) {
    const c = b[i]!
    if (c < 0x80) {
      i++
      continue
    }
    let need: number
    let lo = 0x80
    let hi = 0xbf
    if (c >= 0xc2 && c <= 0xdf) need = 1
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2
      if (c === 0xe0) lo = 0xa0
      if (c === 0xed) hi = 0x9f
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3
      if (c === 0xf0) lo = 0x90
      if (c === 0xf4) hi = 0x8f
    } else return i
    for (let k = 1; k <= need; k++) {
      const d = b[i + k]
      if (d === undefined) return i
      if (k === 1 ? d < lo || d > hi : d < 0x80 || d > 0xbf) return i
    }
    i += need + 1
  }
  return b.length
}

/** Env and input entries validated between two yields (and signal checks). */
const BATCH = 256

/**
 * The validation, in stages: it yields between them so that an async caller can
 * give the event loop a turn (and see a SIGTERM); the signal is checked at each.
 * Every stage is linear in the size of the text.
 */
function * validate (text: string, opts: { file: string, signal?: AbortSignal | undefined, limits: PipelineLimits, named: boolean }): Generator<void, Pipeline> {
  const { file, limits, signal } = opts
  signal?.throwIfAborted()
  const dir = dirname(file)
  const lines = new LineCounter()
  // yaml checks key uniqueness by scanning the map for each key (quadratic): uniqueKeys() below does it with a set.
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false, strict: true })
  const at = (offset: number): SourcePosition => {
    const p = lines.linePos(offset)
    return { file, line: p.line, column: p.col }
  }
  const nodeAt = (n: Node | null | undefined, fallback: number): SourcePosition => at(n?.range?.[0] ?? fallback)

  const syntax = doc.errors[0]
  if (syntax !== undefined) {
    throw new PipelineSyntaxError(at(syntax.pos[0]), firstLine(syntax.message), { cause: syntax })
  }
  yield
  signal?.throwIfAborted()
  uniqueKeys(doc.contents, at)
  yield
  signal?.throwIfAborted()
  const root = doc.contents
  if (!isMap(root)) throw new PipelineWrongTypeError(nodeAt(root, 0), 'strata.yml', 'a mapping', describe(root))

  const top = fields(root, TOP_KEYS, 'strata.yml', at)
  const baseNode = requireField(top, 'base', 'strata.yml', nodeAt(root, 0))
  const baseText = scalarString(baseNode, '"base"', at)
  let base: BaseSpec
  if (baseText === 'host') {
    base = { kind: 'host' }
  } else {
    if (baseText === '') throw new PipelineInvalidValueError(nodeAt(baseNode, 0), '"base" must be "host" or a path to a root filesystem directory')
    base = { kind: 'dir', path: resolve(dir, baseText) }
  }
  const baseIdNode = top.get('base-id')
  const baseId = baseIdNode !== undefined ? scalarString(baseIdNode, '"base-id"', at, true) : undefined
  const saltNode = top.get('salt')
  const salt = saltNode !== undefined ? scalarString(saltNode, '"salt"', at, true) : undefined

  const tmpNode = top.get('tmp-size')
  let tmpSize: number | undefined
  if (tmpNode !== undefined) {
    const p = nodeAt(tmpNode, 0)
    if (!isScalar(tmpNode) || (typeof tmpNode.value !== 'string' && typeof tmpNode.value !== 'number')) {
      throw new PipelineWrongTypeError(p, '"tmp-size"', 'a size such as "4g", "512m" or a number of bytes', describe(tmpNode))
    }
    tmpSize = parseSize(tmpNode.value)
    if (tmpSize === undefined || tmpSize < 4096 || tmpSize > MAX_TMP_SIZE) {
      throw new PipelineInvalidValueError(p, `"tmp-size" ${JSON.stringify(tmpNode.value)} is not a size between 4k and 4t (e.g. "4g", "512m", 1048576)`)
    }
  }

  const reproducibleNode = top.get('reproducible')
  let reproducible: boolean | undefined
  if (reproducibleNode !== undefined) {
    if (!isScalar(reproducibleNode) || typeof reproducibleNode.value !== 'boolean') {
      throw new PipelineWrongTypeError(nodeAt(reproducibleNode, 0), '"reproducible"', 'true or false', describe(reproducibleNode))
    }
    reproducible = reproducibleNode.value
  }

  // The checkout: strata.yml's directory unless `workspace.dir` says otherwise; text
  // parsed without a file name has no directory, hence no workspace unless it names one.
  let workspace: WorkspaceSpec | undefined = opts.named ? { dir, path: DEFAULT_WORKSPACE_PATH } : undefined
  const wsNode = top.get('workspace')
  if (wsNode !== undefined) {
    if (!isMap(wsNode)) throw new PipelineWrongTypeError(nodeAt(wsNode, 0), '"workspace"', 'a mapping with "dir" and "path"', describe(wsNode))
    const wf = fields(wsNode, WORKSPACE_KEYS, '"workspace"', at)
    let wsDir = dir
    const dirNode = wf.get('dir')
    if (dirNode !== undefined) {
      const d = scalarString(dirNode, '"workspace" "dir"', at)
      if (d === '' || d.includes('\0')) throw new PipelineInvalidValueError(nodeAt(dirNode, 0), '"workspace" "dir" is not a path')
      wsDir = resolve(dir, d)
    }
    let wsPath = DEFAULT_WORKSPACE_PATH
    const pathNode = wf.get('path')
    if (pathNode !== undefined) {
      const w = scalarString(pathNode, '"workspace" "path"', at)
      const norm = posix.resolve('/', w)
      if (!w.startsWith('/') || w.includes('\0') || norm === '/' || RESERVED_PATHS.some((r) => norm === r || norm.startsWith(`${r}/`))) {
        throw new PipelineInvalidValueError(nodeAt(pathNode, 0), `"workspace" "path" must be an absolute path other than /, ${RESERVED_PATHS.join(', ')} and what is below them, got ${JSON.stringify(w)}`)
      }
      wsPath = norm
    }
    workspace = { dir: wsDir, path: wsPath }
  }

  const stepsNode = requireField(top, 'steps', 'strata.yml', nodeAt(root, 0))
  if (!isSeq(stepsNode)) throw new PipelineWrongTypeError(nodeAt(stepsNode, 0), '"steps"', 'a list', describe(stepsNode))
  if (stepsNode.items.length === 0) throw new PipelineInvalidValueError(nodeAt(stepsNode, 0), '"steps" is empty')
  // Checked before anything runs: the step past the bound would fail only after all those below it had run.
  const over = stepsNode.items[limits.steps]
  if (over !== undefined) {
    throw new PipelineLimitError(nodeAt(over as Node, 0), 'steps', limits.steps,
      `more than ${limits.steps} steps: a step is mounted on the layers of the steps it uses and of theirs, and OverlayFS stacks at most ${MAX_LOWER_LAYERS} below a step`)
  }

  // Steps start in the workspace, wherever the checkout is on the host; relative
  // cwds are relative to it.
  const defaultCwd = workspace?.path ?? '/'
  const seen = new Map<string, SourcePosition>()
  const steps: StepSpec[] = []
  const uses: UseDecl[] = []
  for (const [i, item] of stepsNode.items.entries()) {
    yield
    signal?.throwIfAborted()
    let where = `step ${i + 1}`
    if (!isMap(item)) throw new PipelineWrongTypeError(nodeAt(item as Node, 0), where, 'a mapping', describe(item))
    // Name the step in messages about its other keys when its name is readable.
    const named = item.items.find((p) => isScalar(p.key) && p.key.value === 'name' && isScalar(p.value) && typeof p.value.value === 'string')
    if (named !== undefined) where = `step "${String((named.value as { value: string }).value)}"`
    const f = fields(item, STEP_KEYS, where, at)
    const nameNode = requireField(f, 'name', where, nodeAt(item, 0))
    const name = scalarString(nameNode, `${where} "name"`, at)
    const nameAt = nodeAt(nameNode, 0)
    if (!STEP_NAME.test(name)) {
      throw new PipelineInvalidValueError(nameAt, `step name "${name}" must be 1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit`)
    }
    const first = seen.get(name)
    if (first !== undefined) throw new PipelineDuplicateStepError(nameAt, name, first)
    seen.set(name, nameAt)
    const stepWhere = `step "${name}"`
    const decl: UseDecl = { name, at: at(item.range?.[0] ?? 0) }
    const useNode = f.get('use')
    if (useNode !== undefined) {
      const useAt = nodeAt(useNode, 0)
      if (!isSeq(useNode)) throw new PipelineWrongTypeError(useAt, `${stepWhere} "use"`, 'a list of step names', describe(useNode))
      decl.useAt = useAt
      // Names are resolved once every step is read: a step may use one defined later.
      decl.use = useNode.items.map((e) => ({ name: scalarString(e, `${stepWhere} "use" entry`, at), at: nodeAt(e as Node, 0) }))
    }
    uses.push(decl)

    const runNode = requireField(f, 'run', stepWhere, nodeAt(item, 0))
    const run = scalarString(runNode, `${stepWhere} "run"`, at)
    if (run.trim() === '') throw new PipelineInvalidValueError(nodeAt(runNode, 0), `${stepWhere} "run" is empty`)

    let cwd = defaultCwd
    const cwdNode = f.get('cwd')
    if (cwdNode !== undefined) {
      const c = scalarString(cwdNode, `${stepWhere} "cwd"`, at)
      if (c === '' || c.includes('\0')) throw new PipelineInvalidValueError(nodeAt(cwdNode, 0), `${stepWhere} "cwd" is not a path`)
      cwd = posix.resolve(defaultCwd, c)
    }

    const env: EnvDecl[] = []
    const envNode = f.get('env')
    if (envNode !== undefined) {
      const seenEnv = new Set<string>()
      const add = (n: string, node: Node, value?: string): void => {
        const p = nodeAt(node, 0)
        if (!ENV_NAME.test(n)) throw new PipelineInvalidValueError(p, `"${n}" is not an environment variable name`)
        if (n === 'STRATA_ENV' || n.startsWith('STRATA_SB_')) throw new PipelineInvalidValueError(p, `${n} is reserved by strata`)
        if (seenEnv.has(n)) throw new PipelineInvalidValueError(p, `${stepWhere} declares ${n} twice`)
        if (value?.includes('\0') === true) throw new PipelineInvalidValueError(p, `${n} contains a NUL byte`)
        seenEnv.add(n)
        env.push(value === undefined ? { name: n } : { name: n, value })
      }
      if (isSeq(envNode) || isMap(envNode)) {
        const extra = envNode.items[limits.env]
        if (extra !== undefined) {
          const node = (isMap(envNode) ? (extra as Pair).key : extra) as Node
          throw new PipelineLimitError(nodeAt(node, 0), 'env', limits.env, `${stepWhere} declares more than ${limits.env} "env" entries`)
        }
      }
      if (isSeq(envNode)) {
        for (const [j, e] of envNode.items.entries()) {
          if (j % BATCH === BATCH - 1) {
            yield
            signal?.throwIfAborted()
          }
          add(scalarString(e, `${stepWhere} "env" entry`, at), e as Node)
        }
      } else if (isMap(envNode)) {
        for (const [j, pair] of envNode.items.entries()) {
          if (j % BATCH === BATCH - 1) {
            yield
            signal?.throwIfAborted()
          }
          const k = scalarString(pair.key, `${stepWhere} "env" name`, at)
          add(k, pair.key as Node, scalarString(pair.value, `${stepWhere} "env" value of ${k}`, at, true))
        }
      } else {
        throw new PipelineWrongTypeError(nodeAt(envNode, 0), `${stepWhere} "env"`, 'a list of names or a mapping of names to values', describe(envNode))
      }
      env.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    }

    const inputs: string[] = []
    const inputsNode = f.get('inputs')
    if (inputsNode !== undefined) {
      if (!isSeq(inputsNode)) throw new PipelineWrongTypeError(nodeAt(inputsNode, 0), `${stepWhere} "inputs"`, 'a list of paths or globs', describe(inputsNode))
      const extra = inputsNode.items[limits.inputs]
      if (extra !== undefined) throw new PipelineLimitError(nodeAt(extra as Node, 0), 'inputs', limits.inputs, `${stepWhere} declares more than ${limits.inputs} "inputs" entries`)
      for (const [j, e] of inputsNode.items.entries()) {
        if (j % BATCH === BATCH - 1) {
          yield
          signal?.throwIfAborted()
        }
        const p = scalarString(e, `${stepWhere} "inputs" entry`, at)
        if (p === '' || p.includes('\0')) throw new PipelineInvalidValueError(nodeAt(e as Node, 0), `${stepWhere}: "${p}" is not a path or glob`)
        const abs = isAbsolute(p) ? posix.normalize(p) : posix.resolve(cwd, p)
        // The workspace is in the key already, file by file: inputs name what lies outside it.
        if (workspace !== undefined && (abs === workspace.path || abs.startsWith(`${workspace.path}/`))) {
          throw new PipelineInvalidValueError(nodeAt(e as Node, 0), `${stepWhere}: input "${p}" is in the workspace (${workspace.path}), which is in the key already; narrow it with "filter"`)
        }
        inputs.push(abs)
      }
    }

    let filter: string[] | undefined
    const filterNode = f.get('filter')
    if (filterNode !== undefined) {
      if (!isSeq(filterNode)) throw new PipelineWrongTypeError(nodeAt(filterNode, 0), `${stepWhere} "filter"`, 'a list of workspace paths or globs', describe(filterNode))
      if (workspace === undefined) throw new PipelineInvalidValueError(nodeAt(filterNode, 0), `${stepWhere} "filter" needs a workspace`)
      const extra = filterNode.items[limits.inputs]
      if (extra !== undefined) throw new PipelineLimitError(nodeAt(extra as Node, 0), 'inputs', limits.inputs, `${stepWhere} declares more than ${limits.inputs} "filter" entries`)
      filter = []
      for (const e of filterNode.items) {
        const p = scalarString(e, `${stepWhere} "filter" entry`, at)
        const problem = patternProblem(p)
        if (problem !== undefined) throw new PipelineInvalidValueError(nodeAt(e as Node, 0), `${stepWhere} "filter": ${problem}`)
        filter.push(p)
      }
    }

    const extras = parseStepOptions(f, stepWhere, (n) => nodeAt(n, item.range?.[0] ?? 0), new Set(env.map((e) => e.name)))
    const cache = extras.cache

    let timeoutMs: number | undefined
    const timeoutNode = f.get('timeout')
    if (timeoutNode !== undefined) {
      const p = nodeAt(timeoutNode, 0)
      if (!isScalar(timeoutNode) || (typeof timeoutNode.value !== 'string' && typeof timeoutNode.value !== 'number')) {
        throw new PipelineWrongTypeError(p, `${stepWhere} "timeout"`, 'a duration such as "30s", "10m", "1h30m" or a number of seconds', describe(timeoutNode))
      }
      const ms = parseDuration(timeoutNode.value)
      if (ms === undefined || ms <= 0 || ms > MAX_TIMEOUT_MS) {
        throw new PipelineInvalidValueError(p, `${stepWhere} "timeout" ${JSON.stringify(timeoutNode.value)} is not a duration between 1ms and 7 days (e.g. "30s", "10m", "1h30m", 90)`)
      }
      timeoutMs = ms
    }

    const step: StepSpec = { name, use: [], run, cwd, env, inputs, cache, at: decl.at }
    if (timeoutMs !== undefined) step.timeoutMs = timeoutMs
    if (filter !== undefined) step.filter = filter
    if (tmpSize !== undefined) step.tmpSize = tmpSize
    if (extras.ttlMs !== undefined) step.ttlMs = extras.ttlMs
    if (extras.outputs.length > 0) step.outputs = extras.outputs
    if (extras.secrets.length > 0) step.secrets = extras.secrets
    const stepReproducible = extras.reproducible ?? reproducible
    if (stepReproducible !== undefined) step.reproducible = stepReproducible
    steps.push(step)
  }

  yield
  signal?.throwIfAborted()
  const parents = yield * resolveUse(uses, limits.layers, signal)
  for (const [i, step] of steps.entries()) step.use = parents[i]!

  const pipeline: Pipeline = { file, base, steps }
  if (baseId !== undefined) pipeline.baseId = baseId
  if (salt !== undefined) pipeline.salt = salt
  if (tmpSize !== undefined) pipeline.tmpSize = tmpSize
  if (reproducible !== undefined) pipeline.reproducible = reproducible
  if (workspace !== undefined) {
    // What outputs copy into the checkout is a product of the pipeline, not a source of it.
    const outs = [...new Set(steps.flatMap((st) => st.outputs ?? []).map((o) => o.split('/').filter((c) => c !== '' && c !== '.').join('/')).filter((o) => o !== ''))]
    if (outs.length > 0) workspace.exclude = outs
    pipeline.workspace = workspace
  }
  return pipeline
}

/** "4g", "512m", "64k", "1t" (powers of 1024) or a number of bytes; undefined when malformed. */
export function parseSize (v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : undefined
  const m = /^(\d+)(?:([kmgt])(?:i?b)?|b?)$/i.exec(v.trim())
  if (m === null) return undefined
  const n = Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] ?? '').toLowerCase() || ' ')
  return Number.isSafeInteger(n) ? n : undefined
}

/** "90" seconds, "500ms", "30s", "10m", "1h30m"; undefined when malformed. */
export function parseDuration (v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? v * 1000 : undefined
  const s = v.trim()
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(s)) return undefined
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  let total = 0
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) total += Number(m[1]) * unit[m[2]!]!
  return total
}

type At = (offset: number) => SourcePosition

function fields (map: YAMLMap, allowed: readonly string[], where: string, at: At): Map<string, Node> {
  const out = new Map<string, Node>()
  for (const pair of map.items as Array<Pair<unknown, unknown>>) {
    const keyNode = pair.key as Node | null
    const pos = at(keyNode?.range?.[0] ?? map.range?.[0] ?? 0)
    if (!isScalar(keyNode) || typeof keyNode.value !== 'string') {
      throw new PipelineWrongTypeError(pos, `a key in ${where}`, 'a string', describe(keyNode))
    }
    const key = keyNode.value
    if (!allowed.includes(key)) throw new PipelineUnknownKeyError(pos, key, where, allowed)
    // `key:` with nothing after it: a null scalar positioned after the key.
    const value = (pair.value ?? keyNode) as Node
    out.set(key, value)
  }
  return out
}

function requireField (f: Map<string, Node>, key: string, where: string, pos: SourcePosition): Node {
  const v = f.get(key)
  if (v === undefined) throw new PipelineMissingFieldError(pos, key, where)
  return v
}

/** Every mapping's keys are distinct (YAML requires it); one set per mapping keeps it linear. */
function uniqueKeys (contents: unknown, at: At): void {
  if (contents === null || typeof contents !== 'object') return
  visit(contents as Node, {
    Map (_, map) {
      const keys = new Set<string>()
      for (const pair of map.items as Array<Pair<unknown, unknown>>) {
        // Keys that are not scalars are refused later with their type; only scalar keys can be compared here.
        if (!isScalar(pair.key)) continue
        const k = `${typeof pair.key.value}:${String(pair.key.value)}`
        if (keys.has(k)) throw new PipelineSyntaxError(at(pair.key.range?.[0] ?? map.range?.[0] ?? 0), 'Map keys must be unique')
        keys.add(k)
      }
    }
  })
}

/** A string scalar; with `lenient`, numbers and booleans are taken as their source text (env values, salt). */
function scalarString (node: unknown, what: string, at: At, lenient = false): string {
  const pos = at((node as Node | null)?.range?.[0] ?? 0)
  if (isScalar(node)) {
    if (typeof node.value === 'string') return node.value
    if (lenient && (typeof node.value === 'number' || typeof node.value === 'boolean')) return node.source ?? String(node.value)
  }
  throw new PipelineWrongTypeError(pos, what, lenient ? 'a string (or number/boolean)' : 'a string', describe(node))
}


function firstLine (s: string): string {
  const i = s.indexOf('\n')
  return (i === -1 ? s : s.slice(0, i)).replace(/ at line \d+, column \d+:?$/, '')
}

/** A shell script that runs `argv` as one command (for `strata exec -- CMD ARGS...`). */
export function shellQuote (argv: readonly string[]): string {
  if (argv.length === 0) throw new TypeError('shellQuote needs at least one word')
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`)).join(' ')
}
