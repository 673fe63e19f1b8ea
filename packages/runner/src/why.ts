import { CID } from 'multiformats/cid'
import { baseChain, chainBase } from './chain.ts'
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

/** Why `stepName` (and each step below it) would hit or run now: its key against the one it last had. Runs nothing. */
export async function why (ctx: RunnerContext, pipeline: Pipeline, stepName: string, opts: { signal?: AbortSignal }): Promise<WhyReport> {
  const target = pipeline.steps.findIndex((s) => s.name === stepName)
  if (target === -1) throw new StepNotFoundError(stepName, pipeline.steps.map((s) => s.name))
  const chain = baseChain(pipeline.base, pipeline.baseId)
  if (pipeline.workspace !== undefined) chain.workspace = resolveWorkspace(pipeline.workspace, ctx.dataDir)
  const base = await chainBase(ctx, chain, opts)
  const steps: WhyStep[] = []
  for (const step of pipeline.steps.slice(0, target + 1)) {
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
    const changes = previous !== undefined
      ? await workspaceChanges(diffDescriptors(previous, descriptor), ctx.dataDir, chainId(pipeline.file, step.name), previous, described.scan)
      : []
    const found = await lookupLocal(ctx, key, undefined, step.cache ? step.ttlMs : undefined)
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
      warnings: described.warnings,
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
