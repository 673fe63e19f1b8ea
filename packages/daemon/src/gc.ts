import type { Logger } from 'pino'
import type { GcOptions, GcReport } from '@strata/store'

export interface GcBudgetInit {
  /** Collect down to this many bytes of layer content. */
  maxSize: number
  /** Above this, recent layers and the last copies in the fleet go too. Default: none. */
  hardLimit?: number
  /** How often the budget is checked besides after each commit and fetch. Default 300 000 ms. */
  intervalMs?: number
}

export interface GcBudgetComponents {
  /** One collection with the budget's sizes (the daemon supplies copy counts). */
  collect (opts: Pick<GcOptions, 'maxSize' | 'hardLimit' | 'signal'>): Promise<GcReport>
  logger: Logger
}

/**
 * Keeps the store within its budget: a collection after commits and fetches
 * (coalesced: one at a time, one more if asked while running) and on a timer.
 */
export class GcBudget {
  readonly init: GcBudgetInit
  readonly #c: GcBudgetComponents
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #again = false
  readonly #stop = new AbortController()

  constructor (components: GcBudgetComponents, init: GcBudgetInit) {
    if (!Number.isSafeInteger(init.maxSize) || init.maxSize < 0) throw new TypeError(`the GC budget's maxSize must be a whole number of bytes, got ${init.maxSize}`)
    if (init.hardLimit !== undefined && !(Number.isSafeInteger(init.hardLimit) && init.hardLimit >= init.maxSize)) throw new TypeError(`the GC hard limit must be a whole number of bytes >= maxSize, got ${init.hardLimit}`)
    this.#c = components
    this.init = init
  }

  start (): void {
    this.#timer = setInterval(() => this.check(), this.init.intervalMs ?? 300_000)
    this.#timer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.#timer)
    this.#stop.abort(new Error('daemon stopping'))
    await this.#running
  }

  /** Asks for a collection soon; returns at once. */
  check (): void {
    if (this.#stop.signal.aborted) return
    if (this.#running !== undefined) {
      this.#again = true
      return
    }
    this.#running = (async () => {
      do {
        this.#again = false
        try {
          const r = await this.#c.collect({ maxSize: this.init.maxSize, hardLimit: this.init.hardLimit, signal: this.#stop.signal })
          if (r.removed.length > 0) this.#c.logger.info({ removed: r.removed.length, before: r.before, after: r.after }, 'collected layers over the budget')
        } catch (err) {
          if (!this.#stop.signal.aborted) this.#c.logger.warn({ err }, 'collection failed')
        }
      } while (this.#again && !this.#stop.signal.aborted)
    })().finally(() => { this.#running = undefined })
  }

  /** Resolves once no collection runs (for tests and shutdown). */
  async idle (): Promise<void> {
    while (this.#running !== undefined) await this.#running
  }
}
