import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import type { StepRecord } from '@strata/records'
import type { Store } from '@strata/store'
import type { FetchOptions, FetchResult } from './layer-fetch.ts'
import { RECORDS_TOPIC } from './records.ts'
import { top } from './rendezvous.ts'

/** What replication needs from the node and the daemon. */
export interface ReplicationComponents {
  peerId: PeerId
  /** Peers subscribed to a gossip topic. */
  subscribers(topic: string): PeerId[]
  store: Pick<Store, 'has'>
  fetch(root: StepRecord['layer'], opts: FetchOptions): Promise<FetchResult>
  /** Runs `task` in the background; the daemon waits for it when it stops. */
  background(task: Promise<unknown>): void
  logger: Logger
}

export interface ReplicationInit {
  /** Peers besides the producer that pull each new layer. */
  replicas: number
  counters: { replicated: number }
}

/**
 * Keeps a new layer alive after the ephemeral VM that made it: every daemon ranks
 * the record topic's subscribers (itself included, the producer excluded) by a
 * rendezvous hash of (layer, peer), and the first `replicas` pull the layer. Every
 * peer ranks alike, so no coordination is needed.
 */
/** Replication fetches running at once, and layers waiting or running at most. */
export const MAX_REPLICATIONS_RUNNING = 2
export const MAX_REPLICATIONS_QUEUED = 256
/** Tries of one replication, the next after REPLICATION_RETRY_MS times the tries so far. */
export const REPLICATION_ATTEMPTS = 3
export const REPLICATION_RETRY_MS = 5000

export class Replication {
  readonly #c: ReplicationComponents
  readonly #init: ReplicationInit
  readonly #replicating = new Set<string>()

  constructor (components: ReplicationComponents, init: ReplicationInit) {
    this.#c = components
    this.#init = init
  }

  /** A record was announced: pull its layer when this node is among the peers it hashes to. */
  announced (record: StepRecord): void {
    if (this.#init.replicas <= 0) return
    const root = record.layer.toString()
    if (this.#replicating.has(root)) return
    const self = this.#c.peerId.toString()
    const candidates = new Set(this.#c.subscribers(RECORDS_TOPIC).map((p) => p.toString()))
    candidates.add(self)
    candidates.delete(record.producer)
    if (!top(root, candidates, this.#init.replicas).includes(self)) return
    // Every writer may announce many layers at once: pull a few at a time, queue a bounded number.
    if (this.#replicating.size >= MAX_REPLICATIONS_QUEUED) {
      this.dropped++
      return
    }
    this.#replicating.add(root)
    this.#queue.push({ record, attempt: 1 })
    this.#next()
  }

  /** Layers not pulled because the queue was full. */
  dropped = 0
  readonly #queue: Array<{ record: StepRecord, attempt: number }> = []
  #running = 0

  #next (): void {
    while (this.#running < MAX_REPLICATIONS_RUNNING && this.#queue.length > 0) {
      const { record, attempt } = this.#queue.shift()!
      const root = record.layer.toString()
      const hint = parsePeerId(record.producer)
      this.#running++
      this.#c.background((async () => {
        let retry = false
        try {
          if (await this.#c.store.has(record.layer)) return
          await this.#c.fetch(record.layer, { hints: hint !== undefined ? [hint] : [] })
          this.#init.counters.replicated++
          this.#c.logger.info({ layer: root }, 'replicated')
        } catch (err) {
          // A fetch that failed (no provider yet, a peer gone) is tried again a little later:
          // without it the layer stays one copy short for good.
          retry = attempt < REPLICATION_ATTEMPTS
          this.#c.logger.warn({ event: 'replication-failed', layer: root, attempt, retry, err }, 'replication fetch failed')
        } finally {
          this.#running--
          if (retry) {
            const t = setTimeout(() => { this.#queue.push({ record, attempt: attempt + 1 }); this.#next() }, REPLICATION_RETRY_MS * attempt)
            t.unref()
          } else this.#replicating.delete(root)
          this.#next()
        }
      })())
    }
  }
}

/** A peer id, or undefined for a string that is not one. */
export function parsePeerId (s: string): PeerId | undefined {
  try {
    return peerIdFromString(s)
  } catch {
    return undefined
  }
}
