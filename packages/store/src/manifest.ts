import { decodeRoot, manifestLinks } from '@strata/chunker'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { MBLOCK } from './keys.ts'
import { BlockNotFoundError } from './errors.ts'
import type { ManifestBlock } from './plan.ts'

/** Bytes of manifest blocks written to the index per batch. */
const MANIFEST_BATCH_BYTES = 4 * 1024 * 1024

/**
 * Set when index keys may have been left that belong to no layer and were not
 * removed on the spot: the next open sweeps them (recover.ts).
 */
export interface Leftovers {
  sweepAtNextOpen: boolean
}

export interface ManifestStream {
  add: (block: ManifestBlock) => void
  flush: () => Promise<void>
  end: (linked: boolean) => Promise<void>
}

/** The manifest blocks in the index (`mblock:` keys): written as a commit goes, read back, linked to layers. */
export class ManifestIndex {
  readonly #db: Index
  readonly #log: Logger
  readonly #leftovers: Leftovers
  /**
   * Commits whose manifest blocks are being written ahead of their pending
   * marker: while there are any, no manifest block is deleted (a removal or a
   * sweep could take one that a commit shares), and the next open sweeps instead.
   */
  #inFlight = 0

  constructor (db: Index, log: Logger, leftovers: Leftovers) {
    this.#db = db
    this.#log = log
    this.#leftovers = leftovers
  }

  get inFlight (): number {
    return this.#inFlight
  }

  /**
   * Writes the manifest blocks given to `add` to the index a few MiB a batch (one
   * batch of a whole manifest, large with inline files, would be copied whole into
   * LevelDB's write batch and memtable), one batch at a time, while the caller
   * goes on. `flush()` writes what is left and reports the first failure. Until
   * `end(linked)`, called once a key links the blocks to a layer (a pending marker
   * or a layer key) or once that failed, no manifest block is deleted; blocks left
   * unlinked are swept at the next open.
   */
  stream (): ManifestStream {
    this.#inFlight++
    let batch = this.#db.batch()
    let bytes = 0
    let failed: unknown
    let writing: Promise<void> = Promise.resolve()
    let wrote = false
    const write = (): void => {
      wrote = true
      const full = batch
      batch = this.#db.batch()
      bytes = 0
      writing = writing.then(async () => { if (failed === undefined) await full.write() }).catch((err: unknown) => { failed ??= err })
    }
    let ended = false
    return {
      add: (block) => {
        batch.put(MBLOCK.key(block.cid.toString()), block.bytes)
        bytes += block.bytes.length
        if (bytes >= MANIFEST_BATCH_BYTES) write()
      },
      flush: async () => {
        if (batch.length > 0) write()
        await writing
        if (failed !== undefined) throw failed
      },
      end: async (linked) => {
        if (ended) return
        ended = true
        await writing
        // Closed even when empty: an open batch stays attached to the database until closed.
        await batch.close()
        this.#inFlight--
        if (!linked && wrote) this.#leftovers.sweepAtNextOpen = true
      }
    }
  }

  /** A layer's manifest as stored: the root, then its entry lists in order (each followed by its times block from format 2 on). */
  async stored (root: string): Promise<ManifestBlock[]> {
    const rootBytes = await this.#db.get(MBLOCK.key(root))
    if (rootBytes === undefined) throw new BlockNotFoundError(root)
    const blocks: ManifestBlock[] = [{ cid: CID.parse(root), bytes: rootBytes }]
    for (const cid of manifestLinks(decodeRoot(rootBytes))) {
      const bytes = await this.#db.get(MBLOCK.key(cid.toString()))
      if (bytes === undefined) throw new BlockNotFoundError(cid.toString())
      blocks.push({ cid, bytes })
    }
    return blocks
  }

  /** Manifest block CIDs (roots, entry lists and times blocks) the layers in `roots` link to. */
  async linked (roots: Iterable<string>): Promise<Set<string>> {
    const linked = new Set<string>()
    for (const root of roots) {
      const bytes = await this.#db.get(MBLOCK.key(root))
      if (bytes === undefined) continue
      linked.add(root)
      try {
        for (const c of manifestLinks(decodeRoot(bytes))) linked.add(c.toString())
      } catch (err) {
        this.#log.warn({ err, layer: root }, 'a stored manifest root does not decode')
      }
    }
    return linked
  }
}
