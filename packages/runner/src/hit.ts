import { rememberStack, stack } from './chain.ts'
import type { RunnerContext, StepContext } from './context.ts'
import { remember } from './describe.ts'
import type { Described } from './describe.ts'
import type { StepResult } from './events.ts'
import { cacheOff } from './hold.ts'
import type { Hit } from './lookup.ts'
import { isDiskFull } from './scratch.ts'

/** A hit: the step's stored layer goes on top of the chain instead of running it. */
export async function hit (ctx: RunnerContext, s: StepContext, described: Described, found: Hit): Promise<StepResult> {
  const { step, emit } = s
  const key = described.key.toString()
  try {
    await remember(ctx, s.lastId, described.key, described.bytes, described.scan)
    await rememberStack(ctx, described.key, s.chain)
  } catch (err) {
    // It serves why() only: the hit stands.
    ctx.log.info({ err, step: step.name, key }, 'cannot note the step\'s key for why()')
    if (isDiskFull(err)) cacheOff(ctx, s.hold, step.name, err, emit)
  }
  stack(s.chain, described.key, { id: found.record.layer, path: found.layer.path, env: found.record.env, step: step.name })
  const layer = found.layer.root.toString()
  const durationMs = performance.now() - s.t0
  ctx.log.debug({ step: step.name, key, layer }, 'hit')
  const event = { type: 'hit' as const, step: step.name, key, layer, size: found.layer.size, durationMs }
  emit(found.fromPeers !== undefined ? { ...event, source: 'peer', providers: found.fromPeers.providers, bytes: found.fromPeers.bytes } : { ...event, source: 'local' })
  return { name: step.name, key, layer, status: 'hit', size: found.layer.size, env: found.record.env, durationMs }
}
