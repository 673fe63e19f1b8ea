import type { Index } from './keys.ts'
import { LAYER } from './keys.ts'
import type { LayerInfo } from './types.ts'
import type { CID } from 'multiformats/cid'

/** What the index keeps of a layer under its `layer:` key, as JSON. */
export interface LayerMeta {
  size: number
  entries: number
  blocks: number
  created: number
  /** Found not to be what its manifest says (a block, a hit's stat check, a verify): never offered again. */
  corrupt?: boolean
  /** Which path, and what was wrong with it, when that is known. */
  corruptPath?: string
  corruptReason?: string
  /** Restored from a peer under the peer policy. */
  untrusted?: boolean
}

/** The value of a `pending:` marker: what the layer key will say once it is written. */
export interface PendingMeta {
  untrusted?: boolean
}

export function encodeJson (value: LayerMeta | PendingMeta): Uint8Array {
  return Buffer.from(JSON.stringify(value))
}

export async function readMeta (db: Index, root: string): Promise<LayerMeta | undefined> {
  const raw = await db.get(LAYER.key(root))
  return raw === undefined ? undefined : JSON.parse(Buffer.from(raw).toString()) as LayerMeta
}

export function layerInfo (root: CID, path: string, meta: LayerMeta): LayerInfo {
  return { root, path, size: meta.size, entries: meta.entries, blocks: meta.blocks, created: meta.created }
}

/** Roots of every layer key, those marked corrupt included. */
export async function layerRoots (db: Index): Promise<string[]> {
  const out: string[] = []
  for await (const key of db.keys(LAYER.range)) out.push(LAYER.id(key))
  return out
}
