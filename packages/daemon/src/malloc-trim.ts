/**
 * Gives the pages that glibc's malloc holds free back to the kernel, on a timer.
 *
 * A daemon's native allocations come and go in bursts: the backing stores of the
 * Buffers a commit or a fetch moves, LevelDB's blocks and memtables, zstd's
 * contexts, the sockets' reads. glibc reuses the chunks they free but returns
 * pages to the kernel only from the top of a heap, so each burst that reaches a
 * new peak raises the RSS for good, though the chunks are free again a second
 * later. malloc_trim(0) returns the whole free pages from inside the heaps as
 * well (doc/decisions/malloc-trim.md has the figures). Turned off with
 * STRATA_MALLOC_TRIM=off, for a process that preloads another allocator.
 */
import { mallocInfo, mallocTrim } from '@strata/sys'

/** How often the trimmer looks. */
export const TRIM_EVERY_MS = 30_000
/** Free bytes inside malloc's heaps below which a look does nothing. */
export const TRIM_FREE_BYTES = 8 * 2 ** 20

export interface TrimCounters {
  /** Trims run. */
  runs: number
  /** Trims that gave pages back. */
  released: number
  /** Milliseconds spent in them, in all. */
  ms: number
}

export class MallocTrimmer {
  readonly #everyMs: number
  readonly #freeBytes: number
  readonly #free: (() => number) | undefined
  readonly #trim: (() => boolean) | undefined
  #timer: NodeJS.Timeout | undefined
  readonly counters: TrimCounters = { runs: 0, released: 0, ms: 0 }

  constructor (opts: { everyMs?: number, freeBytes?: number, free?: () => number, trim?: () => boolean, enabled?: boolean } = {}) {
    this.#everyMs = opts.everyMs ?? TRIM_EVERY_MS
    this.#freeBytes = opts.freeBytes ?? TRIM_FREE_BYTES
    if (!(this.#everyMs > 0)) throw new TypeError(`everyMs must be a positive number of milliseconds, got ${this.#everyMs}`)
    const enabled = opts.enabled ?? process.env.STRATA_MALLOC_TRIM !== 'off'
    this.#free = enabled ? opts.free ?? (mallocInfo !== undefined ? () => mallocInfo!().free : undefined) : undefined
    this.#trim = enabled ? opts.trim ?? mallocTrim : undefined
  }

  /** Whether this trimmer can trim at all: glibc, a build of @strata/sys that has the call, not turned off. */
  get active (): boolean {
    return this.#free !== undefined && this.#trim !== undefined
  }

  start (): void {
    if (!this.active || this.#timer !== undefined) return
    this.#timer = setInterval(() => { this.check() }, this.#everyMs).unref()
  }

  stop (): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** One look: trims when malloc holds at least `freeBytes` free. */
  check (): void {
    if (this.#free === undefined || this.#trim === undefined) return
    if (this.#free() < this.#freeBytes) return
    const t0 = performance.now()
    const released = this.#trim()
    this.counters.ms += performance.now() - t0
    this.counters.runs++
    if (released) this.counters.released++
  }
}
