/**
 * Scavenges of V8's young generation, paced by the block bytes a daemon moves.
 *
 * Every block that crosses the exchange leaves short-lived buffers behind: the
 * socket's reads, the Noise decoder's joins, the cipher's output, the copy of a
 * block cut from a shared message, the producer's read of the block. V8 counts
 * their bytes as external memory, and past its external-memory limit it starts a
 * full collection, though a scavenge would free nearly all of it: the buffers' own
 * objects are small, so the young generation fills too slowly for its scavenges to
 * come first. A scavenge every few MiB of blocks frees those buffers while they
 * are still young, and costs a fraction of marking the whole heap (figures:
 * doc/DECISIONS.md, "The daemon scavenges as it moves blocks").
 *
 * Needs `gc` exposed (`--expose-gc`, which `strata daemon` sets when it re-executes
 * itself); without it the pacer does nothing.
 */

type Collect = (opts: { type: 'minor' | 'major', execution?: 'async' }) => void | Promise<void>

/** Block bytes between two scavenges: the buffers they leave must still fit in the young generation. */
export const SCAVENGE_EVERY_BYTES = 4 * 2 ** 20

const exposed = (globalThis as { gc?: Collect }).gc

export class ScavengePacer {
  readonly every: number
  readonly #collect: Collect | undefined
  #since = 0
  /** Scavenges this pacer asked for. */
  runs = 0

  constructor (opts: { every?: number, collect?: Collect } = {}) {
    this.every = opts.every ?? SCAVENGE_EVERY_BYTES
    if (!(this.every > 0)) throw new TypeError(`every must be a positive byte count, got ${this.every}`)
    this.#collect = 'collect' in opts ? opts.collect : exposed
  }

  /** Whether this pacer can run scavenges at all (`gc` is exposed). */
  get active (): boolean {
    return this.#collect !== undefined
  }

  /** `bytes` of blocks were received or sent; scavenges once `every` bytes have been since the last. */
  moved (bytes: number): void {
    if (this.#collect === undefined) return
    this.#since += bytes
    if (this.#since < this.every) return
    this.#since = 0
    this.runs++
    void this.#collect({ type: 'minor' })
  }
}

/** Growth of the process's ArrayBuffer bytes past which the off-heap pacer collects. */
export const OFF_HEAP_GROWTH_BYTES = 16 * 2 ** 20
/** How often the off-heap pacer looks. */
export const OFF_HEAP_CHECK_MS = 1000

/**
 * Collections paced by the process's ArrayBuffer bytes, whatever allocated them: the
 * store's reads and writes of a commit, LevelDB's values, every message's decrypted
 * bytes. Each is a small object on the V8 heap holding a buffer malloc'd outside it,
 * so neither heap trigger comes in time: the young generation fills slowly, and a
 * full collection waits for 64 MiB more external memory. Meanwhile malloc's heap grows
 * to the garbage's peak and keeps that size (its free chunks are reused, not given
 * back), so every new peak raised the daemon's RSS for good. Once the buffers have
 * grown by `growth` since the last look after a collection, a scavenge frees the young
 * ones; if that is not enough (they lived through a scavenge: a landed block, a long
 * fetch), a full collection runs, concurrently where V8 offers it.
 */
export class OffHeapPacer {
  readonly growth: number
  readonly #collect: Collect | undefined
  readonly #usage: () => number
  readonly #everyMs: number
  #base: number
  #timer: NodeJS.Timeout | undefined
  #busy = false
  readonly runs = { minor: 0, major: 0 }

  constructor (opts: { growth?: number, everyMs?: number, collect?: Collect | undefined, usage?: () => number } = {}) {
    this.growth = opts.growth ?? OFF_HEAP_GROWTH_BYTES
    if (!(this.growth > 0)) throw new TypeError(`growth must be a positive byte count, got ${this.growth}`)
    this.#everyMs = opts.everyMs ?? OFF_HEAP_CHECK_MS
    this.#collect = 'collect' in opts ? opts.collect : exposed
    this.#usage = opts.usage ?? (() => process.memoryUsage().arrayBuffers)
    this.#base = this.#usage()
  }

  get active (): boolean {
    return this.#collect !== undefined
  }

  start (): void {
    if (this.#collect === undefined || this.#timer !== undefined) return
    this.#timer = setInterval(() => { void this.check() }, this.#everyMs).unref()
  }

  stop (): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** One look: collects when the buffers grew by `growth` since the last. */
  async check (): Promise<void> {
    const collect = this.#collect
    if (collect === undefined || this.#busy) return
    const now = this.#usage()
    if (now - this.#base < this.growth) {
      // Buffers freed since: the next growth counts from here.
      this.#base = Math.min(this.#base, now)
      return
    }
    this.#busy = true
    try {
      this.runs.minor++
      await collect({ type: 'minor' })
      if (this.#usage() - this.#base >= this.growth) {
        this.runs.major++
        await collect({ type: 'major', execution: 'async' })
      }
    } finally {
      this.#busy = false
      this.#base = this.#usage()
    }
  }
}

/** The process's pacer: young garbage is the whole process's, whichever exchange made it. */
export const scavenges = new ScavengePacer()
