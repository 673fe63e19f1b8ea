import { CID } from 'multiformats/cid'
import { baseChain, chainBase, mergeChains, stack } from './chain.ts'
import type { Chain } from './chain.ts'
import { runGraph } from './schedule.ts'
import type { RunGraph } from './schedule.ts'
import type { RunnerContext } from './context.ts'
import { chainId, describe, readDescriptor } from './describe.ts'
import { StepNotFoundError } from './errors.ts'
import { describeChange, diffDescriptors, encodeDescriptor } from './key.ts'
import type { KeyChange } from './key.ts'
import { lookupLocal } from './lookup.ts'
import type { Pipeline } from './pipeline.ts'
import { lastKey } from './slots.ts'
import { resolveWorkspace } from './workspace.ts'
import { workspaceChanges } from './workspace-why.ts'
import { describeExpiry } from './ttl.ts'

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
  /** Filter patterns and input globs that match nothing now. */
  warnings: string[]
  /** The record for `key` is older than the step's `cache: { ttl }`. */
  expired?: { created: number, ttlMs: number }
}

export interface WhyReport {
  step: string
  /** The asked step last; the ones below first, so a CLI can point at the first that changed. */
  steps: WhyStep[]
}

/** What why() learnt of a step on its way up: what later steps say about it. */
interface Seen {
  name: string
  /** Its key now differs from the one it last had. */
  keyChanged: boolean
  /** It would hit now. */
  hit: boolean
  /** The layer it stacks now (its hit's, else the one it made last time), and the one it made last time. */
  layer?: string
  before?: string
}

/**
 * Why `stepName` (and each step it builds on) would hit or run now: its key against
 * the one it last had. A step below that would run is assumed to make the layer it
 * made last time (the steps above are then `approximate`). Runs nothing.
 */
export async function why (ctx: RunnerContext, pipeline: Pipeline, stepName: string, opts: { signal?: AbortSignal }): Promise<WhyReport> {
  const target = pipeline.steps.findIndex((s) => s.name === stepName)
  if (target === -1) throw new StepNotFoundError(stepName, pipeline.steps.map((s) => s.name))
  const template = baseChain(pipeline.base, pipeline.baseId)
  if (pipeline.workspace !== undefined) template.workspace = resolveWorkspace(pipeline.workspace, ctx.dataDir)
  const base = await chainBase(ctx, template, opts)
  const graph = runGraph(pipeline.steps)
  const chains: Chain[] = []
  const seen: Seen[] = []
  const steps: WhyStep[] = []
  for (const i of below(graph, target)) {
    const step = pipeline.steps[i]!
    const chain = mergeChains(template, graph.parents[i]!.map((p) => chains[p]!))
    const approximate = chain.approximate
    const described = await describe(ctx, chain, base, step, pipeline.salt ?? null, opts)
    let { descriptor, key } = described
    const lastBytes = await ctx.store.getRecord(lastKey(chainId(pipeline.file, step.name)))
    const previousKey = lastBytes !== undefined ? CID.parse(Buffer.from(lastBytes).toString()) : null
    const previous = previousKey !== null ? await readDescriptor(ctx, previousKey) : undefined
    if (!step.cache && previousKey !== null && previous?.output !== undefined) {
      // Its key depends on what it produced: compare against the last one, with that output.
      descriptor = { ...descriptor, output: previous.output }
      key = (await encodeDescriptor(descriptor)).key
    }
    // Another key format compares as a format change alone.
    const changes = previous !== undefined && previous.below !== undefined
      ? await workspaceChanges(diffDescriptors(previous, descriptor), ctx.dataDir, chainId(pipeline.file, step.name), previous, described.scan)
      : previous !== undefined ? diffDescriptors(previous, descriptor) : []
    const found = await lookupLocal(ctx, key, undefined, step.cache ? step.ttlMs : undefined)
    const expired = 'expired' in found && found.expired !== undefined && step.ttlMs !== undefined ? { created: found.expired, ttlMs: step.ttlMs } : undefined
    const reasons = previous === undefined ? ['this step has not run here before'] : changes.map(describeChange)
    reasons.push(...parentReasons(graph.parents[i]!.map((p) => seen[p]!)))
    if (expired !== undefined) reasons.push(describeExpiry(expired.created, expired.ttlMs))
    const hit = step.cache && 'record' in found
    steps.push({
      name: step.name,
      key: key.toString(),
      previousKey: previousKey?.toString() ?? null,
      hit,
      changes,
      reasons,
      approximate,
      warnings: described.warnings,
      ...(expired !== undefined ? { expired } : {})
    })
    const made = previousKey !== null ? await lookupLocal(ctx, previousKey) : undefined
    const me: Seen = { name: step.name, keyChanged: previousKey !== null && !previousKey.equals(key), hit }
    if (made !== undefined && 'record' in made) me.before = made.record.layer.toString()
    if ('record' in found) {
      stack(chain, key, { id: found.record.layer, path: found.layer.path, env: found.record.env, step: step.name })
      me.layer = found.record.layer.toString()
    } else if (made !== undefined && 'record' in made) {
      // It would run: assume it makes what it made last time, and say the steps above depend on that.
      stack(chain, previousKey!, { id: made.record.layer, path: made.layer.path, env: made.record.env, step: step.name })
      chain.approximate = true
      me.layer = me.before
    } else {
      chain.approximate = true
    }
    chains[i] = chain
    seen[i] = me
  }
  return { step: stepName, steps }
}

/** The steps `target` builds on and itself, each after the steps it uses. */
function below (graph: RunGraph, target: number): number[] {
  const order: number[] = []
  const visited = new Set<number>()
  const visit = (i: number): void => {
    if (visited.has(i)) return
    visited.add(i)
    for (const p of graph.parents[i]!) visit(p)
    order.push(i)
  }
  visit(target)
  return order
}

/** How each step this one uses changed: it will run first, it made another layer, or the same layer again. */
function parentReasons (parents: readonly Seen[]): string[] {
  const out: string[] = []
  for (const p of parents) {
    if (!p.hit) {
      out.push(p.before !== undefined ? `${p.name} will run first: this assumes it makes the same layer as before` : `${p.name} will run first and has no earlier layer here`)
    } else if (p.before !== undefined && p.layer !== p.before) {
      out.push(`${p.name} re-ran and produced another layer`)
    } else if (p.keyChanged && p.layer === p.before) {
      out.push(`${p.name} changed but produced the same layer as before`)
    }
  }
  return out
}
