import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { USED } from './keys.ts'
import { removeEnded, scanLeases } from './lease.ts'
import type { LeaseScan } from './lease.ts'

/**
 * The last use of each layer, for the collector's least-recently-used order: a
 * use (a hit, a mount, a block served) is written at most once per `everyMs`,
 * since serving blocks touches a layer on every read.
 */
export class Uses {
  readonly #db: Index
  readonly #log: Logger
  readonly #everyMs: number
  /** Last use of each layer as last written (or about to be). */
  readonly #touched = new Map<string, number>()
  readonly #writes = new Set<Promise<void>>()

  constructor (db: Index, log: Logger, everyMs: number) {
    this.#db = db
    this.#log = log
    this.#everyMs = everyMs
  }

  touch (root: string, at = Date.now()): void {
    if (at - (this.#touched.get(root) ?? 0) < this.#everyMs) return
    this.#remember(root, at)
    const w = this.#db.put(USED.key(root), Buffer.from(String(at))).catch((err: unknown) => {
      this.#log.debug({ err, layer: root }, 'could not record a layer use')
    })
    this.#writes.add(w)
    void w.finally(() => this.#writes.delete(w))
  }

  /** A use written by the caller (with the layer key of a commit). */
  wrote (root: string, at: number): void {
    this.#remember(root, at)
  }

  /**
   * Keeps `root`'s last use newest in the map's order and forgets uses older than
   * `everyMs` (written by then, or given up): the map holds the last minute's layers,
   * not every layer ever used.
   */
  #remember (root: string, at: number): void {
    this.#touched.delete(root)
    this.#touched.set(root, at)
    for (const [old, when] of this.#touched) {
      if (at - when < this.#everyMs) break
      this.#touched.delete(old)
    }
  }

  /** Layers whose last use is still held here (for tests). */
  get held (): number {
    return this.#touched.size
  }

  forget (root: string): void {
    this.#touched.delete(root)
  }

  async lastUsed (root: string, created: number): Promise<number> {
    const raw = await this.#db.get(USED.key(root))
    const stored = raw === undefined ? created : Number(Buffer.from(raw).toString())
    return Math.max(Number.isFinite(stored) ? stored : created, this.#touched.get(root) ?? 0)
  }

  /** Waits for the uses being written. */
  async settle (): Promise<void> {
    await Promise.all([...this.#writes])
  }

  /** Folds the leases of ended holders into the layers' last use and deletes them. */
  async harvestLeases (dataDir: string): Promise<LeaseScan> {
    const scan = scanLeases(dataDir)
    for (const [root, at] of scan.used) this.touch(root, at)
    await this.settle()
    removeEnded(scan)
    return scan
  }
}
