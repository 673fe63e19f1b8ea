/**
 * A token bucket per key: `rate` bytes a second, with up to `burst` bytes saved up.
 * `take(n)` reserves n bytes at once and says how long to wait before sending them,
 * so that callers sharing a key are served in the order they asked.
 */
export class RateLimiter {
  readonly rate: number
  readonly burst: number
  readonly #now: () => number
  readonly #buckets = new Map<string, { tokens: number, at: number }>()
  /** Keys tracked at most; the idle ones (full buckets) are dropped first. */
  readonly #maxKeys: number

  constructor (rate: number, burst: number, opts: { now?: () => number, maxKeys?: number } = {}) {
    if (!(rate > 0) || !(burst > 0)) throw new TypeError('rate and burst must be positive')
    this.rate = rate
    this.burst = burst
    this.#now = opts.now ?? (() => performance.now())
    this.#maxKeys = opts.maxKeys ?? 4096
  }

  /** Milliseconds to wait before sending `n` bytes for `key` (0 when the bucket has them). */
  take (key: string, n: number): number {
    const now = this.#now()
    let b = this.#buckets.get(key)
    if (b === undefined) {
      if (this.#buckets.size >= this.#maxKeys) this.#prune(now)
      b = { tokens: this.burst, at: now }
      this.#buckets.set(key, b)
    }
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) * this.rate) / 1000)
    b.at = now
    b.tokens -= n
    return b.tokens >= 0 ? 0 : (-b.tokens * 1000) / this.rate
  }

  get size (): number {
    return this.#buckets.size
  }

  #prune (now: number): void {
    for (const [k, b] of this.#buckets) {
      if (b.tokens + ((now - b.at) * this.rate) / 1000 >= this.burst) this.#buckets.delete(k)
    }
    // Everyone is busy: forget the oldest rather than grow without bound.
    while (this.#buckets.size >= this.#maxKeys) this.#buckets.delete(this.#buckets.keys().next().value!)
  }
}
