import { createHash } from 'node:crypto'
import { machine } from 'node:os'
import type { CID } from 'multiformats/cid'
import { baseRoot } from './base.ts'
import type { BaseIdentity } from './base.ts'
import type { Chain } from './chain.ts'
import type { RunnerContext } from './context.ts'
import { collectInputs } from './inputs.ts'
import { KEY_FORMAT, decodeDescriptor, digestKey, encodeDescriptor, envLinesDigest, envValueDigest } from './key.ts'
import type { KeyDescriptor } from './key.ts'
import type { StepSpec } from './pipeline.ts'
import { descriptorKey, lastKey } from './slots.ts'
import { LayeredView } from './view.ts'
import { sourceDateEpoch } from './reproducible.ts'
import { scanWorkspace } from './workspace.ts'
import type { WorkspaceScan } from './workspace.ts'
import { rememberWorkspace } from './workspace-why.ts'

/** A step's key descriptor, its key and its encoding (kept for why()). */
export interface Described {
  descriptor: KeyDescriptor
  key: CID
  bytes: Uint8Array
  /** The step's workspace as keyed: what its mount hides, and its listing for why(). */
  scan?: WorkspaceScan
  /** Filter patterns and input globs that matched nothing. */
  warnings: string[]
}

const USER = '0:0'

/** The key descriptor of `step` over `chain`: its inputs read as the step will see them, its env digested. */
export async function describe (ctx: RunnerContext, chain: Chain, base: BaseIdentity, step: StepSpec, salt: string | null, opts: { signal?: AbortSignal }): Promise<Described> {
  const view = new LayeredView(chain.layers, baseRoot(chain.base))
  const keyed = digestKey(salt, ctx.fleetSalt)
  const warnings: string[] = []
  const inputs = await collectInputs(step.name, step.inputs, view, ctx.limits, { ...opts, digestKey: keyed, onUnmatched: (g) => warnings.push(`input glob ${g} matches nothing`) })
  const scan = chain.workspace === undefined
    ? undefined
    : await scanWorkspace(step.name, chain.workspace, step.filter, { cacheDir: `${ctx.dataDir}/runner/ws-cache`, digestKey: keyed, limits: ctx.limits, signal: opts.signal, log: ctx.log })
  for (const p of scan?.unmatched ?? []) warnings.push(`filter pattern ${p} matches nothing in the workspace`)
  const env: Array<[string, Uint8Array | null]> = step.env.map((e) => {
    const v = e.value ?? ctx.env[e.name]
    return [e.name, v === undefined ? null : envValueDigest(v, keyed)]
  })
  const descriptor: KeyDescriptor = {
    v: KEY_FORMAT,
    below: { base, layers: chain.entries.map((e) => e.id), env: envLinesDigest(chain.envLines, keyed) },
    run: step.run,
    cwd: step.cwd,
    user: USER,
    env,
    inputs,
    workspace: scan === undefined ? null : { path: scan.path, digest: scan.digest, files: scan.files },
    platform: { os: 'linux', arch: machine() },
    salt: keyed.id
  }
  const epoch = sourceDateEpoch(ctx, step)
  if (epoch !== undefined) descriptor.epoch = epoch
  const { key, bytes } = await encodeDescriptor(descriptor)
  const out: Described = { descriptor, key, bytes, warnings }
  if (scan !== undefined) out.scan = scan
  return out
}

/** The descriptor stored for `key`, checked against it; undefined when none is stored. */
export async function readDescriptor (ctx: RunnerContext, key: CID): Promise<KeyDescriptor | undefined> {
  const bytes = await ctx.store.getRecord(descriptorKey(key))
  if (bytes === undefined) return undefined
  return await decodeDescriptor(key, bytes)
}

/** Keeps the descriptor (and the workspace's listing) and points this step's "last used" at it, for why(). */
export async function remember (ctx: RunnerContext, lastId: string, key: CID, descriptorBytes: Uint8Array, scan?: WorkspaceScan): Promise<void> {
  await ctx.store.putRecord(descriptorKey(key), descriptorBytes)
  await ctx.store.putRecord(lastKey(lastId), Buffer.from(key.toString()))
  if (scan !== undefined) await rememberWorkspace(ctx.dataDir, lastId, scan)
}

/** Identifies "this step of this pipeline" across runs, for why(). */
export function chainId (file: string | undefined, step: string): string {
  return createHash('sha256').update(`strata/last/v1\0${file ?? ''}\0${step}`).digest('hex').slice(0, 32)
}
