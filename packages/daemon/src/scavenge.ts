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

type Collect = (opts: { type: 'minor' }) => void

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
    this.#collect({ type: 'minor' })
  }
}

/** The process's pacer: young garbage is the whole process's, whichever exchange made it. */
export const scavenges = new ScavengePacer()
