import { createHash } from 'node:crypto'
import { machine } from 'node:os'
import type { CID } from 'multiformats/cid'
import { baseRoot } from './base.ts'
import type { BaseIdentity } from './base.ts'
import type { Chain } from './chain.ts'
import type { RunnerContext } from './context.ts'
import { collectInputs } from './inputs.ts'
import { KEY_FORMAT, decodeDescriptor, digestKey, encodeDescriptor, envValueDigest } from './key.ts'
import type { KeyDescriptor } from './key.ts'
import type { StepSpec } from './pipeline.ts'
import { descriptorKey, lastKey } from './slots.ts'
import { LayeredView } from './view.ts'

/** A step's key descriptor, its key and its encoding (kept for why()). */
export interface Described {
  descriptor: KeyDescriptor
  key: CID
  bytes: Uint8Array
}

const USER = '0:0'

/** The key descriptor of `step` over `chain`: its inputs read as the step will see them, its env digested. */
export async function describe (ctx: RunnerContext, chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, opts: { signal?: AbortSignal }): Promise<Described> {
  const view = new LayeredView(chain.layers, baseRoot(chain.base))
  const keyed = digestKey(salt, ctx.fleetSalt)
  const inputs = await collectInputs(step.name, step.inputs, view, ctx.limits, { ...opts, digestKey: keyed })
  const env: Array<[string, Uint8Array | null]> = step.env.map((e) => {
    const v = e.value ?? ctx.env[e.name]
    return [e.name, v === undefined ? null : envValueDigest(v, keyed)]
  })
  const descriptor: KeyDescriptor = {
    v: KEY_FORMAT,
    parent: chain.parent ?? base,
    run: step.run,
    cwd: step.cwd,
    user: USER,
    env,
    inputs,
    platform: { os: 'linux', arch: machine() },
    salt: keyed.id
  }
  const { key, bytes } = await encodeDescriptor(descriptor)
  return { descriptor, key, bytes }
}

/** The descriptor stored for `key`, checked against it; undefined when none is stored. */
export async function readDescriptor (ctx: RunnerContext, key: CID): Promise<KeyDescriptor | undefined> {
  const bytes = await ctx.store.getRecord(descriptorKey(key))
  if (bytes === undefined) return undefined
  return await decodeDescriptor(key, bytes)
}

/** Keeps the descriptor and points this step's "last used" at it, for why(). */
export async function remember (ctx: RunnerContext, lastId: string, key: CID, descriptorBytes: Uint8Array): Promise<void> {
  await ctx.store.putRecord(descriptorKey(key), descriptorBytes)
  await ctx.store.putRecord(lastKey(lastId), Buffer.from(key.toString()))
}

/** Identifies "this step of this pipeline" across runs, for why(). */
export function chainId (file: string | undefined, step: string): string {
  return createHash('sha256').update(`strata/last/v1\0${file ?? ''}\0${step}`).digest('hex').slice(0, 32)
}
