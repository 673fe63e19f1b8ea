import type { CID } from 'multiformats/cid'
import { RecordInvalidError, openRecord, recordKey } from '@strata/records'
import type { StepRecord } from '@strata/records'
import type { LayerInfo } from '@strata/store'
import type { RunnerContext, StepContext } from './context.ts'
import { DiskFullError } from './errors.ts'
import type { MissReason } from './events.ts'
import { cacheOff } from './hold.ts'
import type { Hold } from './hold.ts'
import { isFull } from './scratch.ts'
import { BASE_ENV, envObject, envProblem } from './strata-env.ts'
import { isExpired } from './ttl.ts'

/** A record that counts, and its layer, checked and here. */
export interface Found {
  record: StepRecord
  layer: LayerInfo
}

/** A hit, with what the fleet sent when it came from there. */
export type Hit = Found & { fromPeers?: { providers: number, bytes: number } }

/** A hit or why not. */
export type Lookup = Hit | { reason: MissReason, expired?: number }

/**
 * Whether the step can be a hit: nothing is looked up once caching is off or when
 * the step is not to be cached; else the store, then the fleet.
 */
export async function lookupStep (ctx: RunnerContext, s: StepContext, key: CID): Promise<Lookup> {
  const { step, hold } = s
  // A full store cannot take the step's result, nor lease what it would hit: caching is off from here.
  if (!hold.cacheOff && await isFull(ctx.dataDir)) cacheOff(ctx, hold, step.name, new DiskFullError(ctx.dataDir), s.emit)
  if (hold.cacheOff) return { reason: 'cache-off' }
  if (!step.cache || s.noCache) return { reason: step.cache ? 'no-cache' : 'uncached-step' }

  let found: Lookup = await lookupLocal(ctx, key, hold, step.ttlMs)
  if (!('record' in found) && ctx.remote !== undefined) {
    const fromPeers = await fromFleet(ctx, ctx.remote, step.name, key, s.signal)
    if (fromPeers !== undefined) {
      const again = await lookupLocal(ctx, key, hold, step.ttlMs)
      if ('record' in again) found = { ...again, fromPeers }
    }
  }
  if ('record' in found) {
    const tooLarge = envProblem(envObject([...s.chain.envLines, ...found.record.env], BASE_ENV))
    if (tooLarge !== undefined) {
      // Each record's env fits, but not all of them together: the step runs and fails with that error.
      ctx.log.info({ step: step.name, key: key.toString(), reason: tooLarge.reason }, 'not using a record: the environment it adds up to could not be exec\'d')
      return { reason: 'invalid-record' }
    }
  }
  return found
}

/**
 * The first record, in read-scope order, that verifies under the policy and whose layer is here.
 * With `hold`, the layer is leased before it is looked for, so that a collection cannot take it between the check and the mount.
 */
export async function lookupLocal (ctx: RunnerContext, key: CID, hold?: Hold, ttlMs?: number): Promise<Found | { reason: MissReason, expired?: number }> {
  let reason: MissReason = 'no-record'
  // With a ttl, a record older than it is skipped: `expired` (with its `created`) unless another scope has a valid one.
  let expired: number | undefined
  for (const scope of ctx.policy.scopes) {
    const bytes = await ctx.store.getRecord(recordKey(key, scope))
    if (bytes === undefined) continue
    let record: StepRecord
    try {
      record = openRecord(key, bytes, ctx.policy)
      if (record.scope !== scope) throw new RecordInvalidError(key.toString(), 'wrong-scope', `is in scope ${record.scope} but stored under ${scope}`)
    } catch (err) {
      if (!(err instanceof RecordInvalidError)) throw err
      ctx.log.warn({ err, key: key.toString(), scope, reason: err.reason }, 'ignoring a record')
      if (reason === 'no-record') reason = 'invalid-record'
      continue
    }
    if (isExpired(record.created, ttlMs)) {
      if (reason === 'no-record' || reason === 'invalid-record') reason = 'expired'
      expired ??= record.created
      continue
    }
    hold?.lease.add(record.layer.toString())
    // A layer changed since its commit is marked by the check and never hit: the step runs again.
    const found = await ctx.store.checkLayer(record.layer)
    if (found.status !== 'ok') {
      if (found.status === 'corrupt') ctx.log.warn({ key: key.toString(), layer: found.root, path: found.path, reason: found.reason }, 'the layer of a record is corrupt: running the step again')
      reason = found.status === 'corrupt' ? 'layer-corrupt' : 'layer-missing'
      continue
    }
    return { record, layer: found.layer }
  }
  return expired !== undefined ? { reason, expired } : { reason }
}

/** Asks the fleet for `key`; any failure is a miss (the step runs), never an error. */
async function fromFleet (ctx: RunnerContext, remote: NonNullable<RunnerContext['remote']>, step: string, key: CID, signal: AbortSignal | undefined): Promise<{ providers: number, bytes: number } | undefined> {
  try {
    const got = await remote.resolve(key.toString(), { signal, scopes: ctx.policy.scopes })
    ctx.log.debug({ step, key: key.toString(), providers: got.providers, bytes: got.bytes, ms: got.durationMs }, 'fetched from peers')
    return { providers: got.providers, bytes: got.bytes }
  } catch (err) {
    // A cancel surfaces when the step would run: the run dir and events are handled there.
    ctx.log.info({ event: 'fleet-miss', err, step, key: key.toString() }, 'not in the fleet: running the step')
    return undefined
  }
}
