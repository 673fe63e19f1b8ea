import type { PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import { MAX_RECORD_SIZE, claimedKey, recordKey } from '@strata/records'

/**
 * Gossip does not replay: a record published while two parts of the fleet could not
 * reach each other (a partition, a daemon restarting) never reaches the other part.
 * On every new connection each side asks the other for the records it stored last
 * (`/strata/recent/1.0.0`: the server writes up to RECENT_RECORDS envelopes, one frame
 * each, and closes) and learns the ones it lacks as if they had come by gossip.
 */
export const RECENT_PROTOCOL = '/strata/recent/1.0.0'
/** Records remembered and sent per connection. */
export const RECENT_RECORDS = 64
/** Their bytes together; older ones are forgotten first. */
export const RECENT_BYTES = 1024 * 1024
/** Syncs running at once; connections past MAX_PENDING waiting are not synced (gossip still reaches them). */
const CONCURRENCY = 4
const MAX_PENDING = 256
const TIMEOUT_MS = 10_000

export interface RecordSyncInit {
  /** Records kept and sent per connection, at most RECENT_RECORDS; 0 turns the replay off. */
  records: number
}

export interface RecordSyncComponents {
  handle(protocol: string, handler: StreamHandler, opts: { maxInboundStreams: number }): Promise<void>
  dialProtocol(peer: PeerId, protocol: string, opts: { signal: AbortSignal }): Promise<Stream>
  /** Whether this node holds a record in that slot already. */
  holds(slot: string): Promise<boolean>
  /** A record this node lacks: verified, stored and replicated like a gossiped one. */
  learn(envelope: Uint8Array): Promise<void>
  stopping: AbortSignal
  logger: Logger
}

export class RecordSync {
  readonly #c: RecordSyncComponents
  readonly #recent: Array<{ slot: string, bytes: Uint8Array }> = []
  #bytes = 0
  readonly #pending: PeerId[] = []
  #running = 0
  readonly counters = { syncs: 0, recordsSynced: 0, syncsDropped: 0 }

  readonly #max: number

  constructor (components: RecordSyncComponents, init: RecordSyncInit = { records: RECENT_RECORDS }) {
    this.#c = components
    this.#max = Math.max(0, Math.min(RECENT_RECORDS, Math.floor(init.records)))
  }

  async start (): Promise<void> {
    await this.#c.handle(RECENT_PROTOCOL, (stream) => { void this.#serve(stream) }, { maxInboundStreams: 4 })
  }

  /** A record this node stored (its own, or learned): kept to send on new connections. */
  remember (envelope: Uint8Array): void {
    if (this.#max === 0 || envelope.length > MAX_RECORD_SIZE) return
    const slot = slotOf(envelope)
    if (slot === undefined) return
    const at = this.#recent.findIndex((r) => r.slot === slot)
    if (at !== -1) this.#bytes -= this.#recent.splice(at, 1)[0]!.bytes.length
    this.#recent.push({ slot, bytes: envelope })
    this.#bytes += envelope.length
    while (this.#recent.length > this.#max || this.#bytes > RECENT_BYTES) this.#bytes -= this.#recent.shift()!.bytes.length
  }

  get remembered (): number {
    return this.#recent.length
  }

  /** A new connection: ask the peer what it stored last (queued, a few at a time). */
  connected (peer: PeerId): void {
    if (this.#max === 0 || this.#c.stopping.aborted) return
    if (this.#pending.some((p) => p.equals(peer))) return
    if (this.#pending.length >= MAX_PENDING) {
      this.counters.syncsDropped++
      return
    }
    this.#pending.push(peer)
    this.#next()
  }

  #next (): void {
    while (this.#running < CONCURRENCY && this.#pending.length > 0) {
      const peer = this.#pending.shift()!
      this.#running++
      void this.#sync(peer)
        .catch((err: unknown) => this.#c.logger.debug({ err, peer: peer.toString() }, 'record sync failed'))
        .finally(() => { this.#running--; this.#next() })
    }
  }

  async #sync (peer: PeerId): Promise<void> {
    const signal = AbortSignal.any([AbortSignal.timeout(TIMEOUT_MS), this.#c.stopping])
    const stream = await this.#c.dialProtocol(peer, RECENT_PROTOCOL, { signal })
    let learned = 0
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_RECORD_SIZE })
      for (let i = 0; i < RECENT_RECORDS; i++) {
        let frame: Uint8Array
        try {
          frame = (await lp.read({ signal })).subarray()
        } catch (err) {
          if (signal.aborted) throw err
          break // the server closed: that was all
        }
        const slot = slotOf(frame)
        if (slot === undefined) continue
        if (await this.#c.holds(slot)) continue
        await this.#c.learn(frame)
        learned++
      }
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      stream.abort(err as Error)
      throw err
    } finally {
      this.counters.syncs++
      this.counters.recordsSynced += learned
      if (learned > 0) this.#c.logger.info({ event: 'records-synced', peer: peer.toString(), records: learned }, 'records learned from a new connection')
    }
  }

  async #serve (stream: Stream): Promise<void> {
    try {
      const signal = AbortSignal.timeout(TIMEOUT_MS)
      const lp = lpStream(stream, { maxDataLength: MAX_RECORD_SIZE, maxBufferSize: 1024 })
      for (const r of [...this.#recent]) await lp.write(r.bytes, { signal })
      await stream.close({ signal })
    } catch (err) {
      this.#c.logger.debug({ err }, 'recent-records stream aborted')
      stream.abort(err as Error)
    }
  }
}

/** The store slot of a record envelope (its key and scope, as it claims them), or undefined when it cannot be read. */
export function slotOf (envelope: Uint8Array): string | undefined {
  try {
    const c = claimedKey(envelope)
    return recordKey(c.key, c.scope)
  } catch {
    return undefined
  }
}
