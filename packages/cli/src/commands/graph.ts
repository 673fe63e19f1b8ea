import { stepGraph } from '@strata/runner'
import type { Pipeline, Runner, WhyStep } from '@strata/runner'
import { UsageError } from '../context.ts'
import type { ArgValues } from '../context.ts'

/**
 * `strata run --graph` (text) and `--graph=dot`. parseArgs has no option with an optional
 * value: a bare `--graph` is read as `--graph=text` before parsing.
 */
export const graphFlag = { graph: { type: 'string' } } as const
export const GRAPH_USAGE = '[--graph[=dot]]'

/** `argv` with a bare `--graph` (before `--`) spelled `--graph=text`. */
export function graphArgv (argv: readonly string[]): string[] {
  const end = argv.indexOf('--')
  return argv.map((a, i) => (a === '--graph' && (end === -1 || i < end) ? '--graph=text' : a))
}

/** The format --graph asks for, if it is given. */
export function graphFormat (values: ArgValues): 'text' | 'dot' | undefined {
  const g = values.graph
  if (g === undefined) return undefined
  if (g === 'text' || g === 'dot') return g
  throw new UsageError(`--graph=${String(g)}: the graph is printed as text (--graph) or Graphviz dot (--graph=dot)`)
}

/**
 * Each step's state as `strata why` decides it: `would hit` when a record and layer for
 * its key are here now (`… if the steps below make the same layers` when a step below
 * would run first), else `would run`. One why() per step that no earlier report
 * covered, sinks first: a report covers the steps below its step too.
 */
export async function graphStates (runner: Pick<Runner, 'why'>, pipeline: Pipeline, signal: AbortSignal): Promise<Map<string, string>> {
  const states = new Map<string, string>()
  const cache = new Map(pipeline.steps.map((s) => [s.name, s.cache]))
  for (const name of stepGraph(pipeline).order.toReversed()) {
    if (states.has(name)) continue
    const report = await runner.why(pipeline, name, { signal })
    for (const s of report.steps) if (!states.has(s.name)) states.set(s.name, stateOf(s, cache.get(s.name) ?? true))
  }
  return states
}

function stateOf (s: WhyStep, cache: boolean): string {
  // Keys name the layers below: a step above one that runs hits only if that one makes the same layer again.
  if (s.hit) return s.approximate ? 'would hit if the steps below make the same layers' : 'would hit'
  return cache ? 'would run' : 'would run (cache: false)'
}
