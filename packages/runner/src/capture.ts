import { existsSync } from 'node:fs'
import { RECORD_FORMAT, recordKey, signRecord } from '@strata/records'
import type { StepRecord } from '@strata/records'
import type { LayerInfo } from '@strata/store'
import { rememberStack, stack, uncapturedId } from './chain.ts'
import type { RunnerContext, StepContext } from './context.ts'
import { remember } from './describe.ts'
import type { Described } from './describe.ts'
import type { StepResult } from './events.ts'
import type { Ran, Run } from './execute.ts'
import { cacheOff } from './hold.ts'
import { encodeDescriptor } from './key.ts'
import { clampMtimes } from './reproducible.ts'
import { normalizeUpperRoot } from './sandbox.ts'
import { isDiskFull } from './scratch.ts'

/**
 * Commits what the step changed as its layer and records it under its key. Once
 * caching is off, or when the commit fails, the upper dir stays mounted under the
 * later steps of this run instead, uncached.
 */
export async function capture (ctx: RunnerContext, s: StepContext, run: Run, described: Described, ran: Ran): Promise<StepResult> {
  const { step, chain, hold, emit } = s
  const { ownEnv, ranMs } = ran
  if (hold.cacheOff) return await keep(s, run, described, ownEnv)

  const capAt = performance.now()
  await normalizeUpperRoot(run.runDir)
  const epoch = described.descriptor.epoch
  if (epoch !== undefined) clampMtimes(`${run.runDir}/u`, epoch)
  let layer: LayerInfo
  try {
    layer = await ctx.store.commit(`${run.runDir}/u`, {
      signal: s.signal,
      onProgress: (p) => emit({ type: 'capture-progress', step: step.name, unit: p.type, done: p.done, total: p.total })
    })
  } catch (err) {
    // The cache never fails a build: the step ran, and its changes stay mounted for the rest of this run, uncached.
    if (s.signal?.aborted === true || !existsSync(`${run.runDir}/u`)) throw err
    ctx.log.info({ err, step: step.name, key: described.key.toString() }, 'capture failed: the step ran, its result is not cached')
    emit({ type: 'capture-failed', step: step.name, key: described.key.toString(), error: err as Error })
    if (isDiskFull(err)) cacheOff(ctx, hold, step.name, err, emit)
    return await keep(s, run, described, ownEnv)
  }
  let { key, bytes } = described
  try {
    hold.lease.add(layer.root.toString())
    if (!step.cache) {
      // Known only now: the key of an uncached step names what it produced, so the steps above it hit when it produced the same.
      ({ key, bytes } = await encodeDescriptor({ ...described.descriptor, output: layer.root }))
    }
    const record: StepRecord = {
      v: RECORD_FORMAT,
      key,
      parent: chain.parent,
      layer: layer.root,
      size: layer.size,
      env: ownEnv,
      created: Date.now(),
      producer: ctx.identity.peerId,
      scope: ctx.scope,
      epoch: ctx.policy.epoch,
      writer: ctx.writerKey?.id ?? null
    }
    await ctx.store.putRecord(recordKey(key, ctx.scope), signRecord(record, ctx.writerKey ?? ctx.identity))
    await remember(ctx, s.lastId, key, bytes, described.scan)
    await rememberStack(ctx, key, chain)
  } catch (err) {
    // Committed but not recorded (a full index): the layer serves the rest of this run, and nothing finds it later.
    if (s.signal?.aborted === true) throw err
    ctx.log.info({ err, step: step.name, key: key.toString() }, 'recording the capture failed: the step ran, its result is not cached')
    emit({ type: 'capture-failed', step: step.name, key: key.toString(), error: err as Error })
    if (isDiskFull(err)) cacheOff(ctx, hold, step.name, err, emit)
    stack(chain, key, { id: layer.root, path: layer.path, env: ownEnv, step: step.name })
    return { name: step.name, key: key.toString(), layer: '', status: 'ran', size: 0, env: ownEnv, durationMs: performance.now() - s.t0 }
  }
  const capMs = performance.now() - capAt
  emit({ type: 'captured', step: step.name, key: key.toString(), layer: layer.root.toString(), size: layer.size, entries: layer.entries, durationMs: capMs })
  ctx.log.info({ step: step.name, key: key.toString(), layer: layer.root.toString(), ranMs, capMs }, 'captured')
  stack(chain, key, { id: layer.root, path: layer.path, env: ownEnv, step: step.name })
  return { name: step.name, key: key.toString(), layer: layer.root.toString(), status: 'ran', size: layer.size, env: ownEnv, durationMs: performance.now() - s.t0 }
}

/** Keeps the step's upper dir mounted under the later steps of this run, uncached. */
async function keep (s: StepContext, run: Run, described: Described, ownEnv: string[]): Promise<StepResult> {
  s.hold.dirs.push({ dir: run.runDir, fd: run.lockFd })
  run.kept = true
  stack(s.chain, described.key, { id: await uncapturedId(), path: `${run.runDir}/u`, env: ownEnv, step: s.step.name })
  return { name: s.step.name, key: described.key.toString(), layer: '', status: 'ran', size: 0, env: ownEnv, durationMs: performance.now() - s.t0 }
}
