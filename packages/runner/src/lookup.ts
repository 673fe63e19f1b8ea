import type { CID } from 'multiformats/cid'
import { RecordInvalidError, openRecord, recordKey } from '@strata/records'
import type { StepRecord } from '@strata/records'
import type { LayerInfo } from '@strata/store'
import type { RunnerContext } from './context.ts'
import type { MissReason } from './events.ts'
import type { Hold } from './hold.ts'

/** A record that counts, and its layer, checked and here. */
export interface Found {
  record: StepRecord
  layer: LayerInfo
}

/**
 * The first record, in read-scope order, that verifies under the policy and whose layer is here.
 * With `hold`, the layer is leased before it is looked for, so that a collection cannot take it between the check and the mount.
 */
export async function lookupLocal (ctx: RunnerContext, key: CID, hold?: Hold): Promise<Found | { reason: MissReason }> {
  let reason: MissReason = 'no-record'
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
  return { reason }
}

/** Asks the fleet for `key`; any failure is a miss (the step runs), never an error. */
export async function fromFleet (ctx: RunnerContext, remote: NonNullable<RunnerContext['remote']>, step: string, key: CID, signal: AbortSignal | undefined): Promise<{ providers: number, bytes: number } | undefined> {
  try {
    const got = await remote.resolve(key.toString(), { signal, scopes: ctx.policy.scopes })
    ctx.log.debug({ step, key: key.toString(), providers: got.providers, bytes: got.bytes, ms: got.durationMs }, 'fetched from peers')
    return { providers: got.providers, bytes: got.bytes }
  } catch (err) {
    // A cancel surfaces when the step would run: the run dir and events are handled there.
    ctx.log.info({ err, step, key: key.toString() }, 'not in the fleet: running the step')
    return undefined
  }
}
