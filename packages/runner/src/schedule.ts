import { availableParallelism } from 'node:os'
import type { Chain } from './chain.ts'
import { StepCancelledError } from './errors.ts'
import type { RunnerEvent, StepResult } from './events.ts'
import { stepGraph } from './graph.ts'
import type { StepSpec } from './pipeline.ts'

/** The steps of a run as a graph, by index in file order. */
export interface RunGraph {
  names: string[]
  /** Each step's parents, in its `use` order. */
  parents: number[][]
  /** Steps no other step uses, in file order. */
  leaves: number[]
  /** Whether two steps could run at once (false for a plain chain). */
  parallel: boolean
}

/** Most steps a run lets run at once. */
export const MAX_JOBS = 256

/** The graph of `steps` by index (stepGraph checks names and cycles). */
export function runGraph (steps: readonly StepSpec[]): RunGraph {
  const graph = stepGraph({ steps: [...steps] })
  const index = new Map(steps.map((s, i) => [s.name, i]))
  const parents = steps.map((s) => graph.parents.get(s.name)!.map((name) => index.get(name)!))
  const leaves = steps.map((_, i) => i).filter((i) => graph.children.get(steps[i]!.name)!.length === 0)
  const parallel = parents.some((ps, i) => !(i === 0 ? ps.length === 0 : ps.length === 1 && ps[0] === i - 1))
  return { names: steps.map((s) => s.name), parents, leaves, parallel }
}

export function checkJobs (jobs: number | undefined): number {
  if (jobs === undefined) return Math.min(availableParallelism(), MAX_JOBS)
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > MAX_JOBS) throw new TypeError(`jobs must be a whole number from 1 to ${MAX_JOBS}, got ${jobs}`)
  return jobs
}

export interface Scheduled {
  /** By step index; undefined for a step that did not finish. */
  results: Array<StepResult | undefined>
  chains: Array<Chain | undefined>
}

/** A step's share of the run's `jobs`: given up while it only waits, taken back before it goes on. */
export interface JobSlot {
  release (): void
  /** Takes the slot back if it was given up; a cancel of the run rejects. */
  take (): Promise<void>
}

/** A step that never started: a step it uses failed or the run was cancelled. */
class NotRun extends Error {}

/** At most `n` holders at a time; the others queue in order. */
class Slots {
  #free: number
  readonly #queue: Array<() => void> = []
  constructor (n: number) {
    this.#free = n
  }

  async take (signal: AbortSignal): Promise<() => void> {
    signal.throwIfAborted()
    if (this.#free > 0) {
      this.#free--
    } else {
      await new Promise<void>((resolve, reject) => {
        const go = (): void => {
          signal.removeEventListener('abort', stop)
          resolve()
        }
        const stop = (): void => {
          const i = this.#queue.indexOf(go)
          if (i >= 0) this.#queue.splice(i, 1)
          reject(signal.reason)
        }
        this.#queue.push(go)
        signal.addEventListener('abort', stop, { once: true })
      })
    }
    let held = true
    return () => {
      if (!held) return
      held = false
      const next = this.#queue.shift()
      if (next !== undefined) next()
      else this.#free++
    }
  }
}

/**
 * Runs each step once the steps it uses are done, at most `jobs` at once. The first
 * failure cancels the steps running (their commands get SIGTERM, then the kill) and
 * starts no other, unless `keepGoing`: then only the steps that depend on it are left
 * out. Throws the first failure once every step has stopped.
 */
export async function schedule (
  graph: RunGraph,
  jobs: number,
  opts: { signal?: AbortSignal | undefined, keepGoing?: boolean | undefined, onEvent?: ((e: RunnerEvent) => void) | undefined },
  run: (index: number, parents: Chain[], signal: AbortSignal, slot: JobSlot) => Promise<{ result: StepResult, chain: Chain }>
): Promise<Scheduled> {
  const cancel = new AbortController()
  const signal = opts.signal !== undefined ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal
  const slots = new Slots(jobs)
  const out: Scheduled = { results: graph.names.map(() => undefined), chains: graph.names.map(() => undefined) }
  const failures: Error[] = []
  const promises: Array<Promise<Chain>> = []
  // A step cancelled because another failed is not a failure of its own.
  const ours = (err: unknown): boolean => cancel.signal.aborted && opts.signal?.aborted !== true && (err instanceof StepCancelledError || err === cancel.signal.reason)

  const step = (i: number): Promise<Chain> => {
    const had = promises[i]
    if (had !== undefined) return had
    const p = (async () => {
      let parents: Chain[]
      try {
        parents = await Promise.all(graph.parents[i]!.map(step))
      } catch {
        opts.onEvent?.({ type: 'skipped', step: graph.names[i]!, reason: 'parent-failed' })
        throw new NotRun()
      }
      let release: (() => void) | undefined
      try {
        release = await slots.take(signal)
      } catch {
        opts.onEvent?.({ type: 'skipped', step: graph.names[i]!, reason: 'cancelled' })
        throw new NotRun()
      }
      const slot: JobSlot = {
        release: () => {
          release?.()
          release = undefined
        },
        take: async () => {
          release ??= await slots.take(signal)
        }
      }
      try {
        const { result, chain } = await run(i, parents, signal, slot)
        out.results[i] = result
        out.chains[i] = chain
        return chain
      } finally {
        slot.release()
      }
    })()
    p.catch((err: unknown) => {
      if (err instanceof NotRun || ours(err)) return
      failures.push(err as Error)
      if (opts.keepGoing !== true) cancel.abort(err)
    })
    promises[i] = p
    return p
  }
  for (let i = 0; i < graph.names.length; i++) step(i)
  await Promise.allSettled(promises)
  if (failures.length > 0) throw failures[0]
  return out
}

/** The critical path (the chain of steps whose durations add up to the most) and the steps' durations added up. */
export function timing (graph: RunGraph, results: ReadonlyArray<StepResult | undefined>): { criticalPath: { steps: string[], durationMs: number }, stepsMs: number } {
  const finish: number[] = []
  const via: Array<number | undefined> = []
  let stepsMs = 0
  // File order is not always topological (use may name a later step): settle each step after its parents.
  const done = (i: number): number => {
    const have = finish[i]
    if (have !== undefined) return have
    let longest = 0
    let from: number | undefined
    for (const p of graph.parents[i]!) {
      const f = done(p)
      if (f > longest || from === undefined) {
        longest = f
        from = p
      }
    }
    finish[i] = longest + (results[i]?.durationMs ?? 0)
    via[i] = from
    return finish[i]
  }
  let end = -1
  for (let i = 0; i < graph.names.length; i++) {
    stepsMs += results[i]?.durationMs ?? 0
    if (end === -1 || done(i) > finish[end]!) end = i
  }
  const steps: string[] = []
  for (let i: number | undefined = end; i !== undefined && i >= 0; i = via[i]) steps.unshift(graph.names[i]!)
  return { criticalPath: { steps, durationMs: end === -1 ? 0 : finish[end]! }, stepsMs }
}
