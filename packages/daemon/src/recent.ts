/**
 * What happened lately, by key: each entry is kept at least `keepMs` and at most twice
 * that, in two generations swapped every `keepMs`, so a structure that remembers a
 * stream of events (claims ended, CIDs provided) stays as large as the last minutes'
 * events, not all of them. `maxEntries` bounds it besides: a generation that fills
 * early is swapped early, so a burst shortens how long entries are kept.
 */
export class Recent<V> {
  readonly #keepMs: number
  readonly #maxPerGeneration: number
  readonly #now: () => number
  #current = new Map<string, V>()
  #previous = new Map<string, V>()
  #swappedAt: number

  constructor (opts: { keepMs: number, maxEntries: number, now?: () => number }) {
    if (!(opts.keepMs > 0) || !(opts.maxEntries >= 2)) throw new RangeError(`Recent wants keepMs > 0 and maxEntries >= 2, got ${opts.keepMs} and ${opts.maxEntries}`)
    this.#keepMs = opts.keepMs
    this.#maxPerGeneration = Math.floor(opts.maxEntries / 2)
    this.#now = opts.now ?? (() => performance.now())
    this.#swappedAt = this.#now()
  }

  get size (): number {
    this.#age()
    return this.#current.size + this.#previous.size
  }

  get (key: string): V | undefined {
    this.#age()
    return this.#current.get(key) ?? this.#previous.get(key)
  }

  has (key: string): boolean {
    return this.get(key) !== undefined
  }

  /** Remembers `key` from now on (for `keepMs` at least). */
  set (key: string, value: V): void {
    this.#age()
    if (this.#current.size >= this.#maxPerGeneration) this.#swap()
    this.#previous.delete(key)
    this.#current.set(key, value)
  }

  delete (key: string): void {
    this.#current.delete(key)
    this.#previous.delete(key)
  }

  /** Swaps on the window's schedule however seldom it is asked: nothing outlives twice the window. */
  #age (): void {
    const now = this.#now()
    const windows = Math.floor((now - this.#swappedAt) / this.#keepMs)
    if (windows < 1) return
    if (windows >= 2) this.#current = new Map()
    this.#swap(this.#swappedAt + windows * this.#keepMs)
  }

  #swap (at = this.#now()): void {
    this.#previous = this.#current
    this.#current = new Map()
    this.#swappedAt = at
  }
}
