import { closeSync, constants, openSync, readSync } from 'node:fs'
import { isStrataCid, verifyBlock, BlockMismatchError, DAG_CBOR } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import type { Index } from './keys.ts'
import { BLOCK, LAYER, MBLOCK } from './keys.ts'
import { BlockCorruptError, BlockNotFoundError } from './errors.ts'
import { writeInBatches } from './batches.ts'
import type { Located } from './plan.ts'

/** Block lookups answered by one index read, and the most layers a read spans as exact keys. */
const LOOKUP_BATCH = 1024
const LOOKUP_MAX_LAYERS = 32

export interface Location {
  layer: string
  path: string
  offset: number
  length: number
}

/** What the block index needs of the rest of the store. */
export interface BlockIndexDeps {
  db: Index
  layerDir: (root: string) => string
  /** A block served is a use of its layer. */
  touch: (root: string) => void
  /** A copy that does not hash to its CID marks its layer. */
  markCorrupt: (root: string, why: { path?: string, reason?: string }) => Promise<void>
}

/**
 * Block → locations (`block:<cid>:<layer>` keys), and the blocks themselves:
 * content blocks read from the layer dirs at their location, manifest blocks from
 * the index, every one verified before it is returned.
 */
export class BlockIndex {
  readonly #deps: BlockIndexDeps
  readonly #lookups: Array<{ key: string, resolve: (locs: Location[]) => void, reject: (err: Error) => void }> = []
  #lookupScheduled = false

  constructor (deps: BlockIndexDeps) {
    this.#deps = deps
  }

  /** Writes a layer's block locations; keys and values are made as each batch is, not all at once. */
  async write (root: string, locations: readonly Located[]): Promise<void> {
    await writeInBatches(this.#deps.db, (function * () {
      for (const loc of locations) yield { type: 'put' as const, key: BLOCK.key(loc.cid, root), value: encodeLocation(loc.path, loc.offset, loc.length) }
    })())
  }

  /** Deletes a layer's block locations. */
  async drop (root: string, locations: readonly Located[]): Promise<void> {
    await writeInBatches(this.#deps.db, (function * () {
      for (const loc of locations) yield { type: 'del' as const, key: BLOCK.key(loc.cid, root) }
    })())
  }

  async has (cid: CID): Promise<boolean> {
    const key = cid.toString()
    if (cid.code === DAG_CBOR) return (await this.#deps.db.get(MBLOCK.key(key))) !== undefined
    return (await this.locate(key)).length > 0
  }

  async get (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const found = await this.find(cid, opts)
    if (found instanceof Uint8Array) return found
    throw found ?? new BlockNotFoundError(cid.toString())
  }

  /** The block's verified bytes; else why not (undefined: no layer here has it). */
  async find (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array | BlockCorruptError | undefined> {
    opts.signal?.throwIfAborted()
    const key = cid.toString()
    if (!isStrataCid(cid)) return undefined
    if (cid.code === DAG_CBOR) {
      const bytes = await this.#deps.db.get(MBLOCK.key(key))
      if (bytes === undefined) return undefined
      verifyBlock(cid, bytes)
      return bytes
    }
    let corrupt: BlockCorruptError | undefined
    for (const loc of await this.locate(key)) {
      try {
        const bytes = readRange(`${this.#deps.layerDir(loc.layer)}/${loc.path}`, loc.offset, loc.length)
        verifyBlock(cid, bytes)
        this.#deps.touch(loc.layer)
        return bytes
      } catch (err) {
        if (!(err instanceof BlockMismatchError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        corrupt = new BlockCorruptError(key, loc.layer, { cause: err })
        await this.#deps.markCorrupt(loc.layer, { reason: 'block', path: loc.path })
      }
    }
    return corrupt
  }

  /**
   * Where a content block lies, in every layer that holds it. Lookups made in the
   * same turn of the event loop (a peer's want-list, a restore's window of blocks)
   * share one index read: a `getMany` of (block, layer) keys when the store holds
   * few layers, a range scan per block otherwise.
   */
  async locate (key: string): Promise<Location[]> {
    const { promise, resolve, reject } = Promise.withResolvers<Location[]>()
    this.#lookups.push({ key, resolve, reject })
    if (!this.#lookupScheduled) {
      this.#lookupScheduled = true
      setImmediate(() => { void this.#runLookups() })
    }
    return await promise
  }

  async #runLookups (): Promise<void> {
    const db = this.#deps.db
    const batch = this.#lookups.splice(0, LOOKUP_BATCH)
    if (this.#lookups.length > 0) setImmediate(() => { void this.#runLookups() })
    else this.#lookupScheduled = false
    try {
      const layers: string[] = []
      for await (const k of db.keys({ ...LAYER.range, limit: LOOKUP_MAX_LAYERS + 1 })) layers.push(LAYER.id(k))
      if (layers.length <= LOOKUP_MAX_LAYERS) {
        const values = layers.length === 0 ? [] : await db.getMany(batch.flatMap((b) => layers.map((l) => BLOCK.key(b.key, l))))
        batch.forEach((b, i) => {
          const locs: Location[] = []
          layers.forEach((l, j) => {
            const v = values[i * layers.length + j]
            if (v !== undefined) locs.push(decodeLocation(l, v))
          })
          b.resolve(locs)
        })
        return
      }
      await Promise.all(batch.map(async (b) => {
        const locs: Location[] = []
        for await (const [k, v] of db.iterator(BLOCK.of(b.key))) locs.push(decodeLocation(BLOCK.layer(k), v))
        b.resolve(locs)
      }))
    } catch (err) {
      for (const b of batch) b.reject(err as Error)
    }
  }
}

function encodeLocation (path: string, offset: number, length: number): Uint8Array {
  return Buffer.from(`${offset}:${length}:${path}`)
}

function decodeLocation (layer: string, v: Uint8Array): Location {
  const s = Buffer.from(v).toString()
  const a = s.indexOf(':')
  const b = s.indexOf(':', a + 1)
  return { layer, offset: Number(s.slice(0, a)), length: Number(s.slice(a + 1, b)), path: s.slice(b + 1) }
}

/** Up to `length` bytes of `path` from `offset`; never through a symlink. */
export function readRange (path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const buf = Buffer.allocUnsafe(length)
    let got = 0
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, offset + got)
      if (n === 0) break
      got += n
    }
    return got === length ? buf : buf.subarray(0, got)
  } finally {
    closeSync(fd)
  }
}
