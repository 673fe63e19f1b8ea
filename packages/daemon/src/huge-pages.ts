/**
 * Huge pages for the daemon's bursts, small pages at rest.
 *
 * The daemon runs with glibc's malloc asking for transparent huge pages
 * (`glibc.malloc.hugetlb=1`): a restore or a commit touches tens of MB of fresh
 * memory, and a fault per 2 MiB instead of per 4 KiB is what makes it fast on these
 * VMs. At rest the same setting costs memory: malloc_trim gives the free pages inside
 * the heaps back, and khugepaged, scanning, collapses every 2 MiB range that still has
 * one page in use back into a whole huge page, so the RSS climbs back to the heaps'
 * high-water mark over the hours (doc/decisions/huge-pages-burst.md has the figures).
 *
 * The gate lets the kernel use huge pages only while a restore or a commit runs
 * (PR_SET_THP_DISABLE, for the whole process) and forbids them otherwise, at a fault
 * and to khugepaged alike. Huge pages already in place stay until freed. Turned off
 * (huge pages always, as the tunable alone gives) with STRATA_HUGE_PAGES=always.
 */
import { hugePages } from '@strata/sys'

export interface HugePageCounters {
  /** Bursts that turned huge pages on (a burst that overlaps another does not count). */
  bursts: number
  /** Milliseconds with huge pages on, in all. */
  msOn: number
}

/** STRATA_HUGE_PAGES: `burst` (the default) gates them, `always` leaves them on; anything else throws. */
export function enabledByEnv (): boolean {
  const v = process.env.STRATA_HUGE_PAGES
  if (v === undefined || v === '' || v === 'burst') return true
  if (v === 'always') return false
  throw new TypeError(`STRATA_HUGE_PAGES must be "burst" or "always", got ${JSON.stringify(v)}`)
}

export class HugePageGate {
  #set: ((on: boolean) => boolean) | undefined
  #held = 0
  #started = false
  /** When huge pages went on, while a burst holds them under a started gate. */
  #onSince: number | undefined
  readonly counters: HugePageCounters = { bursts: 0, msOn: 0 }

  constructor (opts: { set?: (on: boolean) => boolean, enabled?: boolean } = {}) {
    this.#set = (opts.enabled ?? enabledByEnv()) ? opts.set ?? hugePages : undefined
  }

  /** Whether this gate changes anything: Linux, a build of @strata/sys with the call, not turned off, not refused by the kernel. */
  get active (): boolean {
    return this.#set !== undefined
  }

  /** From now on huge pages only within bursts. */
  start (): void {
    if (this.#set === undefined || this.#started) return
    // A kernel without the call (or a sandbox that forbids it) leaves the gate off.
    if (this.#held === 0 && !this.#apply(false)) {
      this.#set = undefined
      return
    }
    this.#started = true
    if (this.#held > 0) this.#onSince = performance.now()
  }

  /** Huge pages again at all times, as before start(). */
  stop (): void {
    if (this.#set === undefined || !this.#started) return
    this.#started = false
    if (this.#onSince !== undefined) this.counters.msOn += performance.now() - this.#onSince
    this.#onSince = undefined
    this.#apply(true)
  }

  /** Runs `fn` with huge pages on; they go off again when the last burst in flight ends. */
  async during<T> (fn: () => Promise<T>): Promise<T> {
    if (this.#held++ === 0 && this.#started) {
      this.#apply(true)
      this.#onSince = performance.now()
      this.counters.bursts++
    }
    try {
      return await fn()
    } finally {
      if (--this.#held === 0 && this.#started) {
        this.#apply(false)
        this.counters.msOn += performance.now() - this.#onSince!
        this.#onSince = undefined
      }
    }
  }

  /** Sets the process's huge pages; false when the kernel refused (the burst or the rest goes on without). */
  #apply (on: boolean): boolean {
    try {
      this.#set!(on)
      return true
    } catch {
      return false
    }
  }
}
