import { CID } from 'multiformats/cid'
import { baseIdentity } from './base.ts'
import type { BaseIdentity } from './base.ts'
import type { RunnerContext } from './context.ts'
import { readDescriptor } from './describe.ts'
import { BaseMismatchError, ParentNotFoundError } from './errors.ts'
import type { Hold } from './hold.ts'
import { lookupLocal } from './lookup.ts'
import type { BaseSpec } from './pipeline.ts'

/** The filesystem a step starts from: the base and the layers of the steps below. */
export interface Chain {
  base: BaseSpec
  baseId: string | null
  /** Key of the step below, or null on the base. */
  parent: CID | null
  /** Layer dirs below, newest first. */
  layers: string[]
  /** Accumulated $STRATA_ENV lines, oldest first. */
  envLines: string[]
  /** Set once a step below could not be restored (why() only). */
  approximate: boolean
}

/** The chain below a first step: the base alone. */
export function baseChain (base: BaseSpec, baseId: string | undefined): Chain {
  return { base, baseId: baseId ?? null, parent: null, layers: [], envLines: [], approximate: false }
}

/** What identifies the chain's base in the first step's key. */
export async function chainBase (ctx: RunnerContext, chain: Chain, opts: { signal?: AbortSignal }): Promise<BaseIdentity> {
  return await baseIdentity(chain.base, chain.baseId ?? undefined, `${ctx.dataDir}/runner`, opts)
}

/** Puts a step's layer (`dir`) and own env lines on top of the chain: the next step starts from there. */
export function stack (chain: Chain, key: CID, dir: string, env: readonly string[]): void {
  chain.parent = key
  chain.layers.unshift(dir)
  chain.envLines.push(...env)
}

/** Fills `chain` from the records of `parent` and the steps below it, down to the base. */
export async function loadChain (ctx: RunnerContext, chain: Chain, base: BaseIdentity, parent: string, hold: Hold): Promise<void> {
  let key: CID
  try {
    key = CID.parse(parent)
  } catch (err) {
    throw new TypeError(`parent "${parent}" is not a key`, { cause: err })
  }
  chain.parent = key
  const envGroups: string[][] = []
  for (let depth = 0; ; depth++) {
    if (depth > 10_000) throw new ParentNotFoundError(parent, 'the chain of records does not end')
    const found = await lookupLocal(ctx, key, hold)
    if (!('record' in found)) throw new ParentNotFoundError(key.toString(), found.reason === 'layer-missing' ? 'its layer is not in the store' : found.reason === 'layer-corrupt' ? 'its layer is corrupt (marked; run the parent step again)' : 'no valid record in the store')
    chain.layers.push(found.layer.path)
    envGroups.unshift(found.record.env)
    if (found.record.parent === null) {
      const d = await readDescriptor(ctx, key)
      if (d === undefined) throw new ParentNotFoundError(key.toString(), 'its key descriptor is not in the store')
      if (CID.asCID(d.parent) !== null || !sameBase(d.parent as BaseIdentity, base)) throw new BaseMismatchError(parent)
      break
    }
    key = found.record.parent
  }
  chain.envLines = envGroups.flat()
}

function sameBase (a: BaseIdentity, b: BaseIdentity): boolean {
  if (a.kind !== b.kind || a.id !== b.id) return false
  if (a.kind === 'host' && b.kind === 'host') return a.arch === b.arch && Buffer.from(a.osRelease).equals(Buffer.from(b.osRelease))
  if (a.kind === 'dir' && b.kind === 'dir') return Buffer.from(a.digest).equals(Buffer.from(b.digest))
  return false
}
