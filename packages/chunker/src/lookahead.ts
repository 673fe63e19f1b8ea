/**
 * The queue between a reader that works ahead and the one writer that follows it,
 * bounded in items and in weight (bytes). The weight of an item is given back by
 * the writer when it is done with it (`release`), which may be well after it took
 * the item: an item taken but still being worked on keeps its bytes counted. The
 * reader may always add to an empty queue, so one item heavier than the whole
 * budget still goes through, alone.
 *
 * The reader ends the queue (`end`) or fails it (`fail`: the writer's next `next`
 * throws the error); the writer stops it (`stop`: the reader's waiting and later
 * `room` give false, and it should stop reading).
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

  constructor (maxItems: number, maxWeight: number) {
    if (!(maxItems >= 1) || !(maxWeight > 0)) throw new RangeError(`a lookahead needs room for one item and some weight, not ${maxItems} items and ${maxWeight}`)
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

  /**
   * Waits until an item of `weight` fits; false once the writer has stopped. The
   * reader makes the item (starts its fetches) only then, and adds it at once.
   */
  async room (weight: number): Promise<boolean> {
    while (!this.#stopped && this.#queue.length > 0 && (this.#queue.length >= this.#maxItems || this.#weight + weight > this.#maxWeight)) {
      await new Promise<void>((resolve) => { this.#wakeReader = resolve })
    }
    return !this.#stopped
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

  /** The next item, waiting for one; undefined at the end. */
  async next (): Promise<T | undefined> {
    for (;;) {
      if (this.#failed !== undefined) throw this.#failed.error
      if (this.#queue.length > 0) {
        const item = this.#queue.shift()!
        this.#wake('reader')
        return item
      }
      if (this.#ended || this.#stopped) return undefined
      await new Promise<void>((resolve) => { this.#wakeWriter = resolve })
    }
  }

  /** Gives back the weight of an item the writer is done with. */
  release (weight: number): void {
    this.#weight -= weight
    this.#wake('reader')
  }

  /** The writer is done, finished or not: `room` gives false from now on. Returns what was still queued. */
  stop (): T[] {
    this.#stopped = true
    this.#wake('reader')
    this.#wake('writer')
    return this.#queue.splice(0)
  }

  #wake (who: 'reader' | 'writer'): void {
    const wake = who === 'reader' ? this.#wakeReader : this.#wakeWriter
    if (who === 'reader') this.#wakeReader = undefined
    else this.#wakeWriter = undefined
    wake?.()
  }
}
