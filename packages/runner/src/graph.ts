import type { Pipeline } from './pipeline.ts'

/** The steps of a pipeline as the graph their `use` makes. */
export interface StepGraph {
  /** Every step, each after the steps it uses; among the steps free to go next, file order first. */
  order: string[]
  /** The steps each one uses, in its listed order (empty: the base alone). */
  parents: Map<string, string[]>
  /** The steps that use each one, in file order. */
  children: Map<string, string[]>
  /**
   * The steps whose layers lie below `name`, bottom first: for `use: [p1, ..., pk]`, the
   * stack of p1 (its ancestors, then p1), then each step of the stack of p2 not already
   * listed, ..., then those of pk's; a step listed twice keeps its first place. Every step
   * comes after the steps it builds on, and a later parent's own layer lies above an earlier
   * one's. A diamond system -> {node, py} -> test gives [system, node, py] below test.
   */
  ancestors: (name: string) => string[]
}

/**
 * The graph of a pipeline whose `use` the parser resolved. A pipeline built in code with
 * a name that is no step, or with a cycle, is a TypeError.
 */
export function stepGraph (pipeline: Pick<Pipeline, 'steps'>): StepGraph {
  const index = new Map<string, number>()
  for (const [i, s] of pipeline.steps.entries()) {
    if (index.has(s.name)) throw new TypeError(`two steps are named "${s.name}"`)
    index.set(s.name, i)
  }
  const parents = new Map<string, string[]>()
  const children = new Map<string, string[]>()
  for (const s of pipeline.steps) children.set(s.name, [])
  const waiting: number[] = []
  for (const s of pipeline.steps) {
    for (const p of s.use) {
      if (!index.has(p)) throw new TypeError(`step "${s.name}" uses "${p}", which is not a step of the pipeline`)
      children.get(p)!.push(s.name)
    }
    parents.set(s.name, [...s.use])
    waiting.push(new Set(s.use).size)
  }

  // Kahn's algorithm with the ready steps in a heap by file position: stable where the graph leaves freedom.
  const ready = new MinHeap()
  for (const [i, n] of waiting.entries()) if (n === 0) ready.push(i)
  const order: string[] = []
  const done = new Set<string>()
  for (let i = ready.pop(); i !== undefined; i = ready.pop()) {
    const name = pipeline.steps[i]!.name
    order.push(name)
    done.add(name)
    for (const c of new Set(children.get(name)!)) {
      const j = index.get(c)!
      if (--waiting[j]! === 0) ready.push(j)
    }
  }
  if (order.length !== pipeline.steps.length) {
    const stuck = pipeline.steps.filter((s) => !done.has(s.name)).map((s) => s.name)
    throw new TypeError(`the steps' "use" make a cycle among ${stuck.join(', ')}`)
  }

  let stacks: Map<string, string[]> | undefined
  const ancestors = (name: string): string[] => {
    if (!index.has(name)) throw new TypeError(`no step named "${name}"`)
    stacks ??= belowEach(order, parents)
    return [...stacks.get(name)!]
  }
  return { order, parents, children, ancestors }
}

/** What lies below each step (see StepGraph.ancestors), computed in topological order. */
function belowEach (order: readonly string[], parents: ReadonlyMap<string, readonly string[]>): Map<string, string[]> {
  const below = new Map<string, string[]>()
  for (const name of order) {
    const seen = new Set<string>()
    const out: string[] = []
    for (const p of parents.get(name)!) {
      for (const s of [...below.get(p)!, p]) {
        if (seen.has(s)) continue
        seen.add(s)
        out.push(s)
      }
    }
    below.set(name, out)
  }
  return below
}

/** What a step builds on when it uses nothing: no step can be named so (parentheses are not allowed in names). */
const BASE = '(base)'

/**
 * One line per step in topological order: its name, the steps it uses and, with `states`,
 * its state (`strata run --graph`):
 *
 *     system     <- (base)              [would hit]
 *     node-deps  <- system              [would run]
 *     test       <- node-deps, py-deps  [would run]
 */
export function renderGraph (pipeline: Pick<Pipeline, 'steps'>, states?: ReadonlyMap<string, string>): string {
  const g = stepGraph(pipeline)
  const rows = g.order.map((name) => {
    const ps = g.parents.get(name)!
    return { name, from: `<- ${ps.length === 0 ? BASE : ps.join(', ')}`, state: states?.get(name) }
  })
  const nameWidth = Math.max(...rows.map((r) => r.name.length))
  const fromWidth = Math.max(...rows.map((r) => r.from.length))
  return rows.map((r) => r.state === undefined
    ? `${r.name.padEnd(nameWidth)}  ${r.from}`
    : `${r.name.padEnd(nameWidth)}  ${r.from.padEnd(fromWidth)}  [${r.state}]`).join('\n') + '\n'
}

/** Fill colours for the states `strata run --graph` gives. */
const FILL: ReadonlyArray<[prefix: string, colour: string]> = [['would hit', '#c8e6c9'], ['would run', '#ffe0b2']]

/**
 * The graph in Graphviz's dot language (`strata run --graph=dot`): an edge from each step
 * to the steps that use it, the base at the top; with `states`, each step's state under its
 * name. Every name and label is a quoted string.
 */
export function renderDot (pipeline: Pick<Pipeline, 'steps'>, states?: ReadonlyMap<string, string>): string {
  const g = stepGraph(pipeline)
  const lines = ['digraph strata {', '  node [shape=box, style="rounded,filled", fillcolor=white];', `  ${dotId(BASE)} [label="base", shape=ellipse];`]
  for (const name of g.order) {
    const state = states?.get(name)
    const fill = state !== undefined ? FILL.find(([prefix]) => state.startsWith(prefix))?.[1] : undefined
    lines.push(`  ${dotId(name)} [label=${dotId(state === undefined ? name : `${name}\n${state}`)}${fill !== undefined ? `, fillcolor=${dotId(fill)}` : ''}];`)
  }
  for (const name of g.order) {
    const ps = g.parents.get(name)!
    for (const p of ps.length === 0 ? [BASE] : ps) lines.push(`  ${dotId(p)} -> ${dotId(name)};`)
  }
  lines.push('}')
  return lines.join('\n') + '\n'
}

/** A dot string literal: backslash and double quote escaped, a newline as dot's `\n` line break. */
function dotId (s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`).replace(/\r?\n/g, '\\n')}"`
}

/** A binary min-heap of numbers (step positions). */
class MinHeap {
  readonly #a: number[] = []
  push (x: number): void {
    const a = this.#a
    a.push(x)
    for (let i = a.length - 1; i > 0;) {
      const up = (i - 1) >> 1
      if (a[up]! <= x) break
      a[i] = a[up]!
      a[up] = x
      i = up
    }
  }

  pop (): number | undefined {
    const a = this.#a
    const top = a[0]
    const last = a.pop()
    if (top === undefined || last === undefined || a.length === 0) return top
    a[0] = last
    for (let i = 0; ;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < a.length && a[l]! < a[m]!) m = l
      if (r < a.length && a[r]! < a[m]!) m = r
      if (m === i) break
      a[i] = a[m]!
      a[m] = last
      i = m
    }
    return top
  }
}
