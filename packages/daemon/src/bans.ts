import type { PeerId } from '@libp2p/interface'
import type { Logger } from 'pino'

/** Banned peers remembered at once. */
export const MAX_BANS = 10_000

/** Peers that sent a wrong block, each ignored for `banMs`; bounded, since peer ids cost nothing to make. */
export class Bans {
  readonly #banMs: number
  readonly #log: Logger
  readonly #until = new Map<string, number>()

  constructor (banMs: number, log: Logger) {
    this.#banMs = banMs
    this.#log = log
  }

  has (peer: PeerId | string): boolean {
    const key = peer.toString()
    const until = this.#until.get(key)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.#until.delete(key)
    return false
  }

  add (peer: PeerId | string, reason: string): void {
    const key = peer.toString()
    const now = Date.now()
    // Keep the list bounded: expired bans go first, then the oldest.
    if (!this.#until.has(key) && this.#until.size >= MAX_BANS) {
      for (const [k, until] of this.#until) if (until <= now) this.#until.delete(k)
      while (this.#until.size >= MAX_BANS) this.#until.delete(this.#until.keys().next().value!)
    }
    this.#until.delete(key)
    this.#until.set(key, now + this.#banMs)
    this.#log.warn({ peer: key, reason }, 'peer banned')
  }

  /** The peers banned now. */
  list (): string[] {
    return [...this.#until.keys()].filter((p) => this.has(p))
  }
}
