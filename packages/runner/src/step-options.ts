import { posix } from 'node:path'
import { isMap, isScalar, isSeq } from 'yaml'
import type { Node } from 'yaml'
import { PipelineInvalidValueError, PipelineLimitError, PipelineUnknownKeyError, PipelineWrongTypeError } from './errors.ts'
import type { SourcePosition } from './errors.ts'
import { parseTtl } from './ttl.ts'
import { describeNode as describe } from './yaml-words.ts'

/** Entries in one step's `outputs` or `secrets`, as for `inputs`. */
export const MAX_STEP_LIST = 1024
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/** What a step's `cache`, `outputs`, `secrets` and `reproducible` keys say. */
export interface StepOptions {
  cache: boolean
  /** `reproducible`, when the step sets it. */
  reproducible?: boolean
  /** `cache: { ttl }`: a record older than this is a miss. */
  ttlMs?: number
  /** Normalized relative paths, each below the workspace. */
  outputs: string[]
  /** Env names read from the caller's environment at run time; never in the key. */
  secrets: string[]
}

type At = (node: Node | null | undefined) => SourcePosition

/**
 * Reads `cache`, `outputs`, `secrets` and `reproducible` of one step (`f`: its keys) and checks
 * them against `env` (a name cannot be both a declared env and a secret).
 */
export function parseStepOptions (f: ReadonlyMap<string, Node>, where: string, at: At, envNames: ReadonlySet<string>): StepOptions {
  const out: StepOptions = { cache: true, outputs: [], secrets: [] }
  const cacheNode = f.get('cache')
  if (cacheNode !== undefined) {
    if (isScalar(cacheNode) && typeof cacheNode.value === 'boolean') {
      out.cache = cacheNode.value
    } else if (isMap(cacheNode)) {
      for (const pair of cacheNode.items) {
        const k = pair.key as Node | null
        if (!isScalar(k) || k.value !== 'ttl') throw new PipelineUnknownKeyError(at(k), isScalar(k) ? String(k.value) : '?', `${where} "cache"`, ['ttl'])
        const v = pair.value as Node | null
        if (!isScalar(v) || (typeof v.value !== 'string' && typeof v.value !== 'number')) {
          throw new PipelineWrongTypeError(at(v ?? k), `${where} "cache" "ttl"`, 'a duration such as "12h", "7d", "30m"', describe(v))
        }
        const ms = parseTtl(v.value)
        if (ms === undefined) throw new PipelineInvalidValueError(at(v), `${where} "cache" "ttl" ${JSON.stringify(v.value)} is not a duration between 1s and 365d (e.g. "12h", "7d", "1h30m")`)
        out.ttlMs = ms
      }
      if (out.ttlMs === undefined) throw new PipelineInvalidValueError(at(cacheNode), `${where} "cache" mapping needs "ttl"`)
    } else {
      throw new PipelineWrongTypeError(at(cacheNode), `${where} "cache"`, 'true or false, or { ttl: DURATION }', describe(cacheNode))
    }
  }

  const reproducibleNode = f.get('reproducible')
  if (reproducibleNode !== undefined) {
    if (!isScalar(reproducibleNode) || typeof reproducibleNode.value !== 'boolean') {
      throw new PipelineWrongTypeError(at(reproducibleNode), `${where} "reproducible"`, 'true or false', describe(reproducibleNode))
    }
    out.reproducible = reproducibleNode.value
  }

  const outputsNode = f.get('outputs')
  if (outputsNode !== undefined) {
    const seen = new Set<string>()
    for (const [node, text] of list(outputsNode, `${where} "outputs"`, 'a list of paths', at, 'outputs')) {
      const p = checkOutputPath(text)
      if (typeof p !== 'string') throw new PipelineInvalidValueError(at(node), `${where} "outputs": ${JSON.stringify(text)} ${p.problem}`)
      if (!seen.has(p)) out.outputs.push(p)
      seen.add(p)
    }
  }

  const secretsNode = f.get('secrets')
  if (secretsNode !== undefined) {
    for (const [node, name] of list(secretsNode, `${where} "secrets"`, 'a list of environment variable names', at, 'secrets')) {
      if (!ENV_NAME.test(name)) throw new PipelineInvalidValueError(at(node), `"${name}" is not an environment variable name`)
      if (name === 'STRATA_ENV' || name.startsWith('STRATA_')) throw new PipelineInvalidValueError(at(node), `${name} is reserved by strata`)
      if (envNames.has(name)) throw new PipelineInvalidValueError(at(node), `${where} declares ${name} in both "env" and "secrets"`)
      if (out.secrets.includes(name)) throw new PipelineInvalidValueError(at(node), `${where} declares secret ${name} twice`)
      out.secrets.push(name)
    }
  }
  return out
}

/**
 * An output path as the step declares it: relative, below the workspace, no `..`.
 * Returns the normalized path or what is wrong with it.
 */
export function checkOutputPath (text: string): string | { problem: string } {
  if (text === '' || text.includes('\0')) return { problem: 'is not a path' }
  if (text.startsWith('/')) return { problem: 'is absolute: outputs are relative to the workspace' }
  if (text.split('/').includes('..')) return { problem: 'contains "..": outputs stay inside the workspace' }
  const p = posix.normalize(text).replace(/\/+$/, '')
  if (p === '.' || p === '') return { problem: 'names the workspace itself: name what the step produces (e.g. dist)' }
  return p
}

function list (node: Node, what: string, expected: string, at: At, limit: 'outputs' | 'secrets'): Array<[Node, string]> {
  if (!isSeq(node)) throw new PipelineWrongTypeError(at(node), what, expected, describe(node))
  const extra = node.items[MAX_STEP_LIST]
  if (extra !== undefined) throw new PipelineLimitError(at(extra as Node), limit, MAX_STEP_LIST, `${what} has more than ${MAX_STEP_LIST} entries`)
  return node.items.map((item) => {
    const n = item as Node
    if (!isScalar(n) || typeof n.value !== 'string') throw new PipelineWrongTypeError(at(n), `${what} entry`, 'a string', describe(n))
    return [n, n.value]
  })
}

