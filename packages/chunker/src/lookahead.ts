/**
 * The queue between a reader that works ahead and the one writer that follows it,
 * bounded in items and in weight (bytes). The weight of an item is given back by
 * the writer when it is done with it (`release`), which may be well after it took
 * the item: an item taken but still being worked on keeps its bytes counted, and
 * the reader waits for it, so what both hold stays within the budget. The reader
 * may add whenever nothing is held, so one item heavier than the whole budget
 * still goes through, alone; a writer must give back what it holds before it waits
 * for more, or the two wait for each other.
 *
 * The reader ends the queue (`end`) or fails it (`fail`: the writer's next `next`
 * throws the error). The writer stops it (`stop`) when it leaves, finished or not:
 * `stopped` tells the reader to go no further, and a reader waiting in `room` is
 * woken. The reader checks `stopped` after each wait, since the writer may stop
 * while it resumes; whatever it added meanwhile the writer takes with `drain` once
 * the reader is done.
 */
export class Lookahead<T> {
  readonly #maxItems: number
  readonly #maxWeight: number
  readonly #queue: T[] = []
  #weight = 0
  #ended = false
  #failed: { error: unknown } | undefined
  #stopped = false
  #wakeReader: (() => void) | undefined
  #wakeWriter: (() => void) | undefined

  /** At least one item; a weight of 0 lets one item in at a time, whatever it weighs, once the last is released. */
  constructor (maxItems: number, maxWeight: number) {
    if (!(maxItems >= 1) || !(maxWeight >= 0)) throw new RangeError(`a lookahead needs room for one item or more and a weight of 0 or more, not ${maxItems} items and ${maxWeight}`)
    this.#maxItems = maxItems
    this.#maxWeight = maxWeight
  }

  /** Whether the writer has stopped the queue: the reader has no reason to go on. */
  get stopped (): boolean {
    return this.#stopped
  }

  /** Weight queued or taken and not yet released. */
  get weight (): number {
    return this.#weight
  }

  /** Items queued and not taken yet. */
  get queued (): number {
    return this.#queue.length
  }

  /** Waits until an item of `weight` fits, or the writer stops; the caller checks `stopped` next. */
  async room (weight: number): Promise<void> {
    while (!this.#stopped && (this.#queue.length >= this.#maxItems || (this.#weight > 0 && this.#weight + weight > this.#maxWeight))) {
      await new Promise<void>((resolve) => { this.#wakeReader = resolve })
    }
  }

  /** Queues an item, room or not (see `room`). */
  add (item: T, weight: number): void {
    if (this.#ended) throw new Error('an item added after the lookahead ended')
    this.#queue.push(item)
    this.#weight += weight
    this.#wake('writer')
  }

  /** No more items: the writer's `next` gives undefined once it has taken the rest. */
  end (): void {
    this.#ended = true
    this.#wake('writer')
  }

  /** The reader failed: the writer's next `next` throws `error`, ahead of any item still queued. */
  fail (error: unknown): void {
    this.#failed = { error }
    this.#ended = true
    this.#wake('writer')
  }

  /** The next item, waiting for one; undefined once the reader has ended or the writer has stopped. */
  async next (): Promise<T | undefined> {
    for (;;) {
      if (this.#failed !== undefined) throw this.#failed.error
      if (this.#stopped) return undefined
      if (this.#queue.length > 0) {
        const item = this.#queue.shift()!
        this.#wake('reader')
        return item
      }
      if (this.#ended) return undefined
      await new Promise<void>((resolve) => { this.#wakeWriter = resolve })
    }
  }

  /** Gives back the weight of an item the writer is done with. */
  release (weight: number): void {
    this.#weight -= weight
    this.#wake('reader')
  }

  /** The writer is leaving, finished or not: the reader should stop (see `stopped`). */
  stop (): void {
    this.#stopped = true
    this.#wake('reader')
    this.#wake('writer')
  }

  /** Takes every item still queued. */
  drain (): T[] {
    return this.#queue.splice(0)
  }

  #wake (who: 'reader' | 'writer'): void {
    const wake = who === 'reader' ? this.#wakeReader : this.#wakeWriter
    if (who === 'reader') this.#wakeReader = undefined
    else this.#wakeWriter = undefined
    wake?.()
  }
}
