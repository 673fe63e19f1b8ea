import { PipelineCycleError, PipelineDuplicateUseError, PipelineLimitError, PipelineSelfUseError, PipelineUnknownStepError } from './errors.ts'
import type { SourcePosition } from './errors.ts'

/** One step as the parser read it, for resolving `use`. */
export interface UseDecl {
  name: string
  /** Where the step is defined. */
  at: SourcePosition
  /** The `use` entries in listed order, each where it is written; absent without `use`. */
  use?: Array<{ name: string, at: SourcePosition }>
  /** Where `use` itself is. */
  useAt?: SourcePosition
}

/** Steps handled between two yields of resolveUse. */
const BATCH = 256

/**
 * Resolves every step's `use`: absent = the step before it (the first: the base), and
 * checks the graph: names that exist, no step using itself or one step twice, no cycle,
 * and at most `maxLayers` distinct steps below any step. Returns the parents of each step,
 * in the order of `decls`. A generator so the parser can yield between batches; linear
 * in the entries but for the layer count (steps x steps / 32 words).
 */
export function * resolveUse (decls: readonly UseDecl[], maxLayers: number, signal?: AbortSignal): Generator<void, string[][]> {
  const index = new Map<string, number>()
  for (const [i, d] of decls.entries()) index.set(d.name, i)

  // Entry by entry in file order: the first problem in the file is the one reported.
  const parents: number[][] = []
  for (const [i, d] of decls.entries()) {
    if (i % BATCH === BATCH - 1) {
      yield
      signal?.throwIfAborted()
    }
    if (d.use === undefined) {
      parents.push(i === 0 ? [] : [i - 1])
      continue
    }
    const seen = new Map<string, SourcePosition>()
    const ps: number[] = []
    for (const u of d.use) {
      if (u.name === d.name) throw new PipelineSelfUseError(u.at, d.name)
      const j = index.get(u.name)
      if (j === undefined) throw new PipelineUnknownStepError(u.at, d.name, u.name, closest(u.name, decls.map((x) => x.name)))
      const first = seen.get(u.name)
      if (first !== undefined) throw new PipelineDuplicateUseError(u.at, d.name, u.name, first)
      seen.set(u.name, u.at)
      ps.push(j)
    }
    parents.push(ps)
  }

  const order = yield * topological(decls, parents, signal)
  yield * checkLayers(decls, parents, order, maxLayers, signal)
  return parents.map((ps) => ps.map((j) => decls[j]!.name))
}

/**
 * Parents before children (depth-first, iterative: a long chain must not overflow the
 * stack); a cycle is a PipelineCycleError at the `use` entry that closes it.
 */
function * topological (decls: readonly UseDecl[], parents: readonly number[][], signal?: AbortSignal): Generator<void, number[]> {
  const WHITE = 0
  const GREY = 1
  const BLACK = 2
  const colour = new Uint8Array(decls.length)
  const order: number[] = []
  for (let root = 0; root < decls.length; root++) {
    if (colour[root] !== WHITE) continue
    if (root % BATCH === BATCH - 1) {
      yield
      signal?.throwIfAborted()
    }
    // The path from root: each step with the index of the next parent to visit.
    const path: Array<{ node: number, next: number }> = [{ node: root, next: 0 }]
    colour[root] = GREY
    while (path.length > 0) {
      const top = path[path.length - 1]!
      const ps = parents[top.node]!
      if (top.next === ps.length) {
        colour[top.node] = BLACK
        order.push(top.node)
        path.pop()
        continue
      }
      const p = ps[top.next++]!
      if (colour[p] === GREY) {
        const from = path.findIndex((e) => e.node === p)
        throw cycleError(decls, path.slice(from).map((e) => e.node))
      }
      if (colour[p] === WHITE) {
        colour[p] = GREY
        path.push({ node: p, next: 0 })
      }
    }
  }
  return order
}

/**
 * `cycle`: steps each using the next, the last using the first. Only a `use` that
 * names a step later in the file can close a cycle (the default names the one
 * before): the error is at that entry, and the cycle is named from its step.
 */
function cycleError (decls: readonly UseDecl[], cycle: number[]): PipelineCycleError {
  let k = cycle.findIndex((s, i) => cycle[(i + 1) % cycle.length]! > s)
  if (k === -1) k = 0
  const rotated = [...cycle.slice(k), ...cycle.slice(0, k)]
  const from = decls[rotated[0]!]!
  const to = decls[rotated[1 % rotated.length]!]!
  const at = from.use?.find((u) => u.name === to.name)?.at ?? from.useAt ?? from.at
  const implicit = rotated.filter((s) => decls[s]!.use === undefined).map((s) => `"${decls[s]!.name}"`)
  const note = implicit.length === 0
    ? undefined
    : `${implicit.join(', ')} ${implicit.length === 1 ? 'has' : 'have'} no "use": ${implicit.length === 1 ? 'it builds' : 'each builds'} on the step before it`
  return new PipelineCycleError(at, [...rotated, rotated[0]!].map((s) => decls[s]!.name), note)
}

/** Each step's ancestors as a bitset; more than `max` of them is a PipelineLimitError. */
function * checkLayers (decls: readonly UseDecl[], parents: readonly number[][], order: readonly number[], max: number, signal?: AbortSignal): Generator<void, void> {
  const words = Math.ceil(decls.length / 32)
  const below = new Uint32Array(words * decls.length)
  for (const [n, s] of order.entries()) {
    if (n % BATCH === BATCH - 1) {
      yield
      signal?.throwIfAborted()
    }
    const mine = below.subarray(s * words, (s + 1) * words)
    for (const p of parents[s]!) {
      const theirs = below.subarray(p * words, (p + 1) * words)
      for (let w = 0; w < words; w++) mine[w] = mine[w]! | theirs[w]!
      mine[p >>> 5] = mine[p >>> 5]! | (1 << (p & 31))
    }
    let count = 0
    for (let w = 0; w < words; w++) count += popcount(mine[w]!)
    if (count > max) {
      const d = decls[s]!
      throw new PipelineLimitError(d.useAt ?? d.at, 'layers', max,
        `step "${d.name}" builds on ${count} steps (those it uses and theirs), and OverlayFS stacks at most ${max} layers below a step`)
    }
  }
}

function popcount (x: number): number {
  let v = x - ((x >>> 1) & 0x55555555)
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333)
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}

/** The name nearest `name` by edit distance, if it is near enough to be a typo. */
export function closest (name: string, names: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Math.max(1, Math.floor(name.length / 3)) + 1
  for (const n of names) {
    if (Math.abs(n.length - name.length) >= bestDistance) continue
    const d = editDistance(name, n)
    if (d < bestDistance) {
      best = n
      bestDistance = d
    }
  }
  return best
}

/** Levenshtein distance; both strings are step names (at most 64 characters). */
function editDistance (a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length]!
}
