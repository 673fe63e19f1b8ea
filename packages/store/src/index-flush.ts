import type { Logger } from 'pino'
import type { Index } from './keys.ts'

/** Below every key the index writes: compacting it touches no table. */
const NO_KEY = '\x00'

/**
 * Writes the index's memtable out to a table on a timer, so that what it holds in
 * memory is bounded by time as well as by its write buffer.
 *
 * LevelDB keeps writes in a memtable until it reaches the write buffer's size. A
 * daemon's buffer is 16 MiB, for a restore's manifest; between restores the
 * small writes of hits, records and uses fill it at a few MB an hour, so the
 * memory stays held for hours and the log LevelDB replays at the next open grows
 * with it. LevelDB flushes the memtable before any compaction of a range; a range
 * below every key compacts no table, so a flush costs a table write (a few ms;
 * nothing when the memtable is empty) and the memtable's arena goes back to malloc.
 */
export class IndexFlusher {
  readonly #db: Index
  readonly #log: Logger
  readonly #everyMs: number
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined

  /** `everyMs`: checked by `prepare` (open.ts), which both openers call. */
  constructor (db: Index, log: Logger, everyMs: number) {
    this.#db = db
    this.#log = log
    this.#everyMs = everyMs
  }

  start (): void {
    if (this.#timer !== undefined) return
    this.#timer = setInterval(() => { void this.flush() }, this.#everyMs).unref()
  }

  /** Stops the timer and waits for a flush under way, so the index can close. */
  async stop (): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.#running
  }

  /** One flush now; a flush already under way is waited for instead of doubled. */
  async flush (): Promise<void> {
    if (this.#running !== undefined) return await this.#running
    if (this.#db.status !== 'open') return
    this.#running = this.#db.compactRange(NO_KEY, NO_KEY)
      .catch((err: unknown) => { this.#log.warn({ err }, 'could not write the index memtable out') })
      .finally(() => { this.#running = undefined })
    await this.#running
  }
}
