import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { LAYER } from './keys.ts'
import type { LayerMeta } from './meta.ts'
import type { Removal } from './remove.ts'
import type { RootLocks } from './root-locks.ts'
import type { Uses } from './uses.ts'
import type { GcKept, GcOptions, GcReport, LayerInfo } from './types.ts'

const GRACE_MS = 60_000

export interface CollectorDeps {
  db: Index
  log: Logger
  dataDir: string
  uses: Uses
  removal: Removal
  locks: RootLocks
  listLayers: () => Promise<LayerInfo[]>
}

interface GcLayer {
  root: string
  size: number
  lastUsed: number
}

/** The garbage collector: corrupt layers, then least recently used ones, one collection at a time. */
export class Collector {
  readonly #d: CollectorDeps
  #collecting: Promise<unknown> = Promise.resolve()

  constructor (deps: CollectorDeps) {
    this.#d = deps
  }

  async gc (opts: GcOptions): Promise<GcReport> {
    checkSize('maxSize', opts.maxSize)
    if (opts.hardLimit !== undefined) {
      checkSize('hardLimit', opts.hardLimit)
      if (opts.hardLimit < opts.maxSize) throw new TypeError(`hardLimit (${opts.hardLimit}) must not be below maxSize (${opts.maxSize})`)
    }
    const run = this.#collecting.then(async () => await this.#gc(opts))
    this.#collecting = run.catch(() => {})
    return await run
  }

  /** Resolves once the collection under way, if any, has ended. */
  async idle (): Promise<void> {
    await this.#collecting
  }

  async #gc (opts: GcOptions): Promise<GcReport> {
    const { db, log, uses, removal, locks } = this.#d
    const now = Date.now()
    const graceMs = opts.graceMs ?? GRACE_MS
    const dryRun = opts.dryRun === true
    // Ended leases are records of use: fold them in, then forget them.
    const scan = await uses.harvestLeases(this.#d.dataDir)
    if (!dryRun) await removal.removeAside()
    // A layer marked corrupt is never offered again: it only takes room.
    const corrupt: Array<{ root: string, size: number, lastUsed: number }> = []
    for await (const [key, value] of db.iterator(LAYER.range)) {
      const meta = JSON.parse(Buffer.from(value).toString()) as LayerMeta
      if (meta.corrupt === true) corrupt.push({ root: LAYER.id(key), size: meta.size, lastUsed: meta.created })
    }
    const corruptRemoved: GcReport['removed'] = []
    for (const c of corrupt) {
      if (!dryRun && !(await locks.exclusive(c.root, async () => await removal.discard(c.root, { unlessLeased: true })))) continue
      log.info({ layer: c.root, dryRun }, 'removing a layer marked corrupt')
      corruptRemoved.push({ ...c, lastCopy: false, corrupt: true })
    }
    const layers: GcLayer[] = []
    for (const l of await this.#d.listLayers()) {
      const root = l.root.toString()
      layers.push({ root, size: l.size, lastUsed: await uses.lastUsed(root, l.created) })
    }
    layers.sort((a, b) => a.lastUsed - b.lastUsed || (a.root < b.root ? -1 : 1))
    const before = layers.reduce((n, l) => n + l.size, 0)
    let total = before
    const report: GcReport = { dryRun, maxSize: opts.maxSize, hardLimit: opts.hardLimit ?? null, before, after: before, removed: corruptRemoved, kept: [] }
    const held = new Set([...scan.held, ...locks.busy()])
    const copies = new Map<string, number | undefined>()
    const copiesOf = async (root: string): Promise<number | undefined> => {
      if (!copies.has(root)) {
        let n: number | undefined
        try {
          n = await opts.copies?.(CID.parse(root), { signal: opts.signal })
        } catch (err) {
          log.debug({ err, layer: root }, 'copy count unknown')
        }
        copies.set(root, n)
      }
      return copies.get(root)
    }
    const kept = new Map<string, GcKept>()
    const remove = async (l: GcLayer, lastCopy: boolean): Promise<boolean> => {
      opts.signal?.throwIfAborted()
      if (!dryRun) {
        const gone = await locks.exclusive(l.root, async () => await removal.discard(l.root, { unlessLeased: true }))
        if (!gone) {
          kept.set(l.root, { root: l.root, size: l.size, reason: 'leased' })
          return false
        }
      }
      if (lastCopy) log.warn({ event: 'last-copy-removed', layer: l.root, size: l.size, dryRun }, 'removing the last known copy of a layer in the fleet: the store is over its hard limit')
      else log.info({ layer: l.root, size: l.size, lastUsed: l.lastUsed, dryRun }, 'removing a least recently used layer')
      report.removed.push({ root: l.root, size: l.size, lastUsed: l.lastUsed, lastCopy })
      kept.delete(l.root)
      total -= l.size
      return true
    }
    const removed = new Set<string>()
    // First the layers others hold copies of (or nobody knows), down to maxSize.
    for (const l of layers) {
      if (total <= opts.maxSize) break
      if (held.has(l.root)) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'leased' })
        continue
      }
      if (now - l.lastUsed < graceMs) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'recent' })
        continue
      }
      if (await copiesOf(l.root) === 1) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'last-copy' })
        continue
      }
      if (await remove(l, false)) removed.add(l.root)
    }
    // Over the hard limit: recent layers and last copies go too, still least recently used first.
    if (opts.hardLimit !== undefined) {
      for (const l of layers) {
        if (total <= opts.hardLimit) break
        if (removed.has(l.root) || held.has(l.root) || kept.get(l.root)?.reason === 'leased') continue
        if (await remove(l, await copiesOf(l.root) === 1)) removed.add(l.root)
      }
    }
    report.after = total
    report.kept = [...kept.values()]
    if (total > opts.maxSize) log.warn({ size: total, maxSize: opts.maxSize, kept: report.kept.length }, 'the store stays over its size budget: the rest is leased, recent or the last copy in the fleet')
    return report
  }
}

function checkSize (name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`${name} must be a whole number of bytes >= 0, got ${v}`)
}
