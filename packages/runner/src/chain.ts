import { randomBytes } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { baseIdentity } from './base.ts'
import type { BaseIdentity } from './base.ts'
import type { RunnerContext } from './context.ts'
import { readDescriptor } from './describe.ts'
import { BaseMismatchError, ParentNotFoundError } from './errors.ts'
import type { Hold } from './hold.ts'
import { lookupLocal } from './lookup.ts'
import type { BaseSpec } from './pipeline.ts'
import { stackKey } from './slots.ts'
import type { WorkspaceSpec } from './workspace.ts'

/** One layer of the stack a step is mounted on. */
export interface StackEntry {
  /** The layer's root CID; for a result that was not captured, a random CID that nothing else has. */
  id: CID
  /** Its dir, mountable as a lower dir. */
  path: string
  /** The $STRATA_ENV lines the step that produced it appended. */
  env: readonly string[]
  /** The step of this run (or of why()'s walk) that produced it, when known. */
  step?: string
}

/** The filesystem a step starts from: the base and the layers of the steps it uses, merged. */
export interface Chain {
  base: BaseSpec
  baseId: string | null
  /** Key of the one step whose result is on top (the step's single parent), else null. */
  parent: CID | null
  /** The stack, bottom first. */
  entries: StackEntry[]
  /** Layer dirs of the stack, newest first (as OverlayFS takes lower dirs). */
  layers: string[]
  /** The stack's $STRATA_ENV lines, oldest first. */
  envLines: string[]
  /** Set once a step below could not be restored (why() only). */
  approximate: boolean
  /** The checkout the steps see (its host dir resolved; see resolveWorkspace), if any. */
  workspace?: WorkspaceSpec
}

/** The chain below a first step: the base alone. */
export function baseChain (base: BaseSpec, baseId: string | undefined): Chain {
  return { base, baseId: baseId ?? null, parent: null, entries: [], layers: [], envLines: [], approximate: false }
}

/** What identifies the chain's base in the first step's key. */
export async function chainBase (ctx: RunnerContext, chain: Chain, opts: { signal?: AbortSignal }): Promise<BaseIdentity> {
  return await baseIdentity(chain.base, chain.baseId ?? undefined, `${ctx.dataDir}/runner`, opts)
}

function derive (chain: Chain): void {
  chain.layers = chain.entries.map((e) => e.path).reverse()
  chain.envLines = chain.entries.flatMap((e) => e.env)
}

/** Puts a step's layer and own env lines on top of the chain: the steps that use it start from there. */
export function stack (chain: Chain, key: CID, entry: StackEntry): void {
  chain.parent = key
  chain.entries.push(entry)
  derive(chain)
}

/**
 * The filesystem of a step that uses `parents`, in the listed order: each parent's
 * stack in turn, each layer once where it first appears, so that the last listed
 * parent's own layers are on top and a layer two parents share (their common base
 * step) stays below both. A layer counts as the same when its root CID and env lines are.
 */
export function mergeChains (template: Chain, parents: readonly Chain[]): Chain {
  const out: Chain = { ...template, parent: parents.length === 1 ? parents[0]!.parent : null, entries: [], approximate: template.approximate || parents.some((p) => p.approximate) }
  const seen = new Set<string>()
  for (const p of parents) {
    for (const e of p.entries) {
      const id = `${e.id.toString()}\n${e.env.join('\n')}`
      if (seen.has(id)) continue
      seen.add(id)
      out.entries.push(e)
    }
  }
  derive(out)
  return out
}

/** An identity for a result that was not captured: it matches nothing, so no step above it hits. */
export async function uncapturedId (): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(randomBytes(32)))
}

interface StoredStack {
  v: 1
  entries: Array<{ id: CID, env: string[] }>
}

/** Stack records above this many bytes are not kept: exec() cannot chain on the step, nothing else changes. */
const MAX_STACK_RECORD = 1024 * 1024

/** Keeps the stack below the step of `key`, so that exec() can rebuild it from the key (loadChain). */
export async function rememberStack (ctx: RunnerContext, key: CID, chain: Chain): Promise<void> {
  const body: StoredStack = { v: 1, entries: chain.entries.map((e) => ({ id: e.id, env: [...e.env] })) }
  const bytes = dagCbor.encode(body)
  if (bytes.length > MAX_STACK_RECORD) return
  await ctx.store.putRecord(stackKey(key), bytes)
}

/** Fills `chain` with the stack of `parent`'s step and its own layer on top, from the store. */
export async function loadChain (ctx: RunnerContext, chain: Chain, base: BaseIdentity, parent: string, hold: Hold): Promise<void> {
  let key: CID
  try {
    key = CID.parse(parent)
  } catch (err) {
    throw new TypeError(`parent "${parent}" is not a key`, { cause: err })
  }
  const d = await readDescriptor(ctx, key)
  if (d === undefined) throw new ParentNotFoundError(key.toString(), 'its key descriptor is not in the store')
  if (d.below === undefined || !sameBase(d.below.base, base)) throw new BaseMismatchError(parent)
  const bytes = await ctx.store.getRecord(stackKey(key))
  if (bytes === undefined) throw new ParentNotFoundError(key.toString(), 'the layers below it are not recorded here')
  const stored = dagCbor.decode<StoredStack>(bytes)
  const entries: StackEntry[] = []
  for (const e of stored.entries) {
    const id = CID.asCID(e.id)
    if (id === null || !Array.isArray(e.env)) throw new ParentNotFoundError(key.toString(), 'the record of the layers below it is malformed')
    hold.lease.add(id.toString())
    const found = await ctx.store.checkLayer(id)
    if (found.status !== 'ok') throw new ParentNotFoundError(key.toString(), `the layer ${id.toString()} below it is ${found.status === 'corrupt' ? 'corrupt (marked; run the step that made it again)' : 'not in the store'}`)
    entries.push({ id, path: found.layer.path, env: e.env })
  }
  const own = await lookupLocal(ctx, key, hold)
  if (!('record' in own)) throw new ParentNotFoundError(key.toString(), own.reason === 'layer-missing' ? 'its layer is not in the store' : own.reason === 'layer-corrupt' ? 'its layer is corrupt (marked; run the parent step again)' : 'no valid record in the store')
  chain.entries = entries
  stack(chain, key, { id: own.record.layer, path: own.layer.path, env: own.record.env })
}

function sameBase (a: BaseIdentity, b: BaseIdentity): boolean {
  if (a.kind !== b.kind || a.id !== b.id) return false
  if (a.kind === 'host' && b.kind === 'host') return a.arch === b.arch && Buffer.from(a.osRelease).equals(Buffer.from(b.osRelease))
  if (a.kind === 'dir' && b.kind === 'dir') return Buffer.from(a.digest).equals(Buffer.from(b.digest))
  return false
}
