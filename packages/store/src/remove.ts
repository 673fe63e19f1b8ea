import { existsSync, mkdirSync, readdirSync, renameSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { decodeEntryList, decodeRoot } from '@strata/chunker'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { BLOCK, FPRINT, LAYER, MBLOCK, PENDING, REMOVING, USED } from './keys.ts'
import { BATCH } from './batches.ts'
import type { Dirs } from './dirs.ts'
import { removeTreeAsync } from './dirs.ts'
import type { Leftovers, ManifestIndex } from './manifest.ts'
import type { RootLocks } from './root-locks.ts'
import type { Uses } from './uses.ts'
import { failpoint } from './failpoint.ts'
import { scanLeases } from './lease.ts'

export interface RemovalDeps {
  db: Index
  log: Logger
  dirs: Dirs
  manifests: ManifestIndex
  leftovers: Leftovers
  locks: RootLocks
  uses: Uses
}

/** Taking layers out of the store: their dir and index keys, crash-safe, and never from under a live lease. */
export class Removal {
  readonly #d: RemovalDeps

  constructor (deps: RemovalDeps) {
    this.#d = deps
  }

  /**
   * Removes a layer so that a crash at any moment leaves it either whole or on its
   * way out: the layer key is replaced by a `removing:` mark (it is invisible from
   * then on), its dir is moved into staging, its index keys are dropped, the mark
   * goes, the dir is deleted. open() finishes a marked removal. With `unlessLeased`,
   * a lease taken on the layer before the mark was visible rolls the removal back.
   */
  async discard (root: string, opts: { unlessLeased?: boolean } = {}): Promise<boolean> {
    const db = this.#d.db
    const raw = await db.get(LAYER.key(root))
    const mark = db.batch()
    mark.put(REMOVING.key(root), raw ?? Buffer.from('{}'))
    mark.del(LAYER.key(root))
    await mark.write()
    failpoint('gc:marked')
    if (opts.unlessLeased === true && raw !== undefined && this.#d.locks.leased(root).has(root)) {
      const back = db.batch()
      back.put(LAYER.key(root), raw)
      back.del(REMOVING.key(root))
      await back.write()
      return false
    }
    await this.finish(root)
    this.#d.uses.forget(root)
    return true
  }

  /** The rest of a removal once its mark is written; open() calls it for marks a crash left. */
  async finish (root: string): Promise<void> {
    const dir = this.#d.dirs.layer(root)
    let moved: string | undefined
    if (existsSync(dir)) {
      moved = this.#d.dirs.staging()
      renameSync(dir, `${moved}/removed`)
    }
    failpoint('gc:moved')
    await this.dropIndex(root)
    failpoint('gc:unindexed')
    await this.#d.db.del(REMOVING.key(root))
    // Out of sight already; deleting a big tree takes a while, which must not stall a daemon's event loop.
    if (moved !== undefined) await removeTreeAsync(moved)
  }

  /** Drops a layer's keys: its block locations, then the manifest blocks no other layer links to. */
  async dropIndex (root: string): Promise<void> {
    const { db, log, manifests, leftovers } = this.#d
    const rootBytes = await db.get(MBLOCK.key(root))
    let batch = db.batch()
    batch.del(LAYER.key(root))
    await batch.write()
    batch = db.batch()
    const own = [root]
    if (rootBytes !== undefined) {
      try {
        const decoded = decodeRoot(rootBytes)
        for (const timesCid of decoded.times) own.push(timesCid.toString())
        for (const listCid of decoded.entries) {
          own.push(listCid.toString())
          const list = await db.get(MBLOCK.key(listCid.toString()))
          if (list === undefined) continue
          for (const e of decodeEntryList(list, { version: decoded.version })) {
            for (const c of e.chunks ?? []) batch.del(BLOCK.key(c.cid.toString(), root))
          }
          if (batch.length >= BATCH) {
            await batch.write()
            batch = db.batch()
          }
        }
      } catch (err) {
        leftovers.sweepAtNextOpen = true
        log.warn({ err, layer: root }, 'could not read the manifest of a dropped layer; the next open sweeps its block locations')
      }
    }
    await batch.write()
    const others: string[] = []
    for await (const key of db.keys(LAYER.range)) others.push(LAYER.id(key))
    for await (const key of db.keys(PENDING.range)) others.push(PENDING.id(key))
    const linked = await manifests.linked(others.filter((o) => o !== root))
    batch = db.batch()
    // A commit writing its manifest may share these blocks before it has a pending marker.
    if (manifests.inFlight > 0) leftovers.sweepAtNextOpen = true
    else for (const cid of own) if (!linked.has(cid)) batch.del(MBLOCK.key(cid))
    batch.del(USED.key(root))
    batch.del(FPRINT.key(root))
    await batch.write()
  }

  /** Moves a layer dir that must go, but that a live lease may have mounted, to `aside/<root>.<random>`. */
  setAside (root: string): void {
    const { dataDir } = this.#d.dirs
    mkdirSync(`${dataDir}/aside`, { recursive: true })
    const to = `${dataDir}/aside/${root}.${randomBytes(4).toString('hex')}`
    renameSync(this.#d.dirs.layer(root), to)
    this.#d.log.warn({ layer: root, path: to }, 'a corrupt layer is leased: its dir is set aside until the lease ends')
  }

  /** Deletes the set-aside dirs whose root no live lease holds any more. */
  async removeAside (): Promise<number> {
    const { dataDir } = this.#d.dirs
    let names: string[]
    try {
      names = readdirSync(`${dataDir}/aside`)
    } catch {
      return 0
    }
    if (names.length === 0) return 0
    const held = scanLeases(dataDir).held
    let n = 0
    for (const name of names) {
      if (held.has(name.slice(0, name.lastIndexOf('.')))) continue
      const moved = this.#d.dirs.staging()
      renameSync(`${dataDir}/aside/${name}`, `${moved}/removed`)
      await removeTreeAsync(moved)
      n++
    }
    return n
  }
}
