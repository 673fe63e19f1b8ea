import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import type { Store } from '@strata/store'
import { BLOCKS_PROTOCOL, BLOCKS_PROTOCOL_ZSTD, MAX_WANTS_PER_MESSAGE } from './codec.ts'
import { Bans } from './bans.ts'
import { BlockServer } from './server.ts'
import { PeerBlockSource } from './source.ts'

import type { Refill } from './source.ts'

export { PeerBlockSource } from './source.ts'

/** What the block exchange needs from the libp2p node. */
export interface ExchangeComponents {
  store: Pick<Store, 'getBlock'>
  registrar: {
    handle(protocol: string, handler: (stream: Stream, connection: Connection) => void | Promise<void>, opts?: { maxInboundStreams?: number, maxOutboundStreams?: number }): Promise<void>
    unhandle(protocol: string): Promise<void>
  }
  /** Dials the first of `protocols` the peer speaks (multistream-select). */
  dialProtocol(peer: PeerId, protocols: string | string[], opts?: { signal?: AbortSignal }): Promise<Stream>
  logger: Logger
}

export interface ExchangeInit {
  /** CIDs the fetching side puts in one WANT. Default 64. */
  wantBatch?: number
  /** Streams open at once to one provider, fetching side. Default 4. */
  streamsPerProvider?: number
  /** Inbound block streams one peer may hold open at once. Default 8. */
  maxInboundStreams?: number
  /** Wants one peer may have outstanding with us at once, over all its streams. Default 1024. */
  maxOutstandingWants?: number
  /** Time from sending a WANT to its first answer, and the server's wait for the WANT. Default 10 000 ms. */
  firstByteTimeoutMs?: number
  /** Longest silence between two messages of one stream. Default 10 000 ms. */
  idleTimeoutMs?: number
  /** How long a peer that sent a wrong block stays banned. Default 10 minutes. */
  banMs?: number
  /** Failed requests (timeout, broken stream) for one block before giving up; DONT_HAVEs do not count. Default 6. */
  maxAttempts?: number
  /** Bytes of recently fetched blocks kept to serve peers fetching the same layer. Default 64 MiB. */
  landedBytes?: number
  /** How long a landed block is kept for peers fetching the same layer. Default 30 000 ms. */
  landedMs?: number
  /**
   * How long a peer's want waits for a block this node is fetching at that moment.
   * A peer sharing the fetch waits on, this long at a time, while this node asks the
   * block of full providers. Default 3 000 ms.
   */
  landingWaitMs?: number
  /** Block bytes a second served to one peer, over all its streams. Default 256 MiB/s (above what one Noise connection carries). */
  servePeerBytesPerSecond?: number
  /** Bytes one peer may be sent at once after a quiet spell. Default 8 MiB. */
  servePeerBurstBytes?: number
  /**
   * Offer and serve `/strata/blocks/1.1.0` (answers compressed with zstd) besides
   * 1.0.0. false: speak 1.0.0 only, as daemons before it did. Default true.
   */
  compress?: boolean
}

export interface ExchangeCounters {
  bytesFromPeers: number
  bytesToPeers: number
  blocksFromPeers: number
  blocksToPeers: number
  blocksRejected: number
  /** Blocks whose sending was delayed by a peer's serving rate. */
  blocksThrottled: number
  /** Bytes the block streams carried from peers (compressed where the peer speaks 1.1.0), framing included. */
  wireBytesFromPeers: number
  /** Bytes the block streams carried to peers, likewise. */
  wireBytesToPeers: number
  /** Blocks this node fetched because a peer sharing the fetch asked for them before its own restore did. */
  blocksForSharers: number
  /** Blocks received again during one fetch (each logged with its reason): bytes the fleet moved twice. */
  blocksDuplicate: number
}

export interface FetchStats {
  /** Providers that sent at least one block. */
  providersUsed: number
  bytes: number
  blocks: number
}

/**
 * `/strata/blocks/1.1.0` (compressed) and `1.0.0`: serves blocks from the store (BlockServer) and fetches
 * them from providers (PeerBlockSource, one per restore); the ban list and the
 * blocks landed lately are shared by both sides.
 */
export class BlockExchange {
  readonly counters: ExchangeCounters = { bytesFromPeers: 0, bytesToPeers: 0, blocksFromPeers: 0, blocksToPeers: 0, blocksRejected: 0, blocksThrottled: 0, wireBytesFromPeers: 0, wireBytesToPeers: 0, blocksForSharers: 0, blocksDuplicate: 0 }
  readonly init: Required<ExchangeInit>
  readonly #c: ExchangeComponents
  readonly #log: Logger
  readonly #bans: Bans
  readonly #server: BlockServer
  /** Fetches running on this node: a peer asking for a block one of them is fetching waits for it. */
  readonly #sources = new Set<PeerBlockSource>()
  #started = false

  constructor (components: ExchangeComponents, init: ExchangeInit = {}) {
    this.#c = components
    this.#log = components.logger.child({ component: 'exchange' })
    this.init = {
      wantBatch: init.wantBatch ?? 64,
      streamsPerProvider: init.streamsPerProvider ?? 4,
      maxInboundStreams: init.maxInboundStreams ?? 8,
      maxOutstandingWants: init.maxOutstandingWants ?? 1024,
      firstByteTimeoutMs: init.firstByteTimeoutMs ?? 10_000,
      idleTimeoutMs: init.idleTimeoutMs ?? 10_000,
      banMs: init.banMs ?? 10 * 60_000,
      maxAttempts: init.maxAttempts ?? 6,
      landedBytes: init.landedBytes ?? 64 * 1024 * 1024,
      landedMs: init.landedMs ?? 30_000,
      landingWaitMs: init.landingWaitMs ?? 3000,
      servePeerBytesPerSecond: init.servePeerBytesPerSecond ?? 256 * 1024 * 1024,
      servePeerBurstBytes: init.servePeerBurstBytes ?? 8 * 1024 * 1024,
      compress: init.compress ?? true
    }
    if (this.init.wantBatch < 1 || this.init.wantBatch > MAX_WANTS_PER_MESSAGE) throw new TypeError(`wantBatch must be 1..${MAX_WANTS_PER_MESSAGE}`)
    this.#bans = new Bans(this.init.banMs, this.#log)
    const sources = this.#sources
    this.#server = new BlockServer({
      store: components.store,
      isBanned: (peer) => this.#bans.has(peer),
      * landing (cid, peer) {
        const key = cid.toString()
        let waiting = false
        for (const source of sources) {
          const coming = source.landing(key, peer)
          if (coming === undefined) continue
          waiting = true
          yield coming
        }
        if (waiting) return
        // No fetch here has asked for it yet: a peer sharing one asked first, taking
        // this node for the block's owner. Fetched here, it crosses the providers' links
        // once, rather than once for the asker and again when this node gets to it.
        for (const source of sources) {
          const coming = source.fetchFor(cid, peer)
          if (coming !== undefined) {
            yield coming
            return
          }
        }
      },
      counters: this.counters,
      logger: this.#log
    }, this.init)
  }

  /** The protocols this node serves and offers, preferred first. */
  get protocols (): string[] {
    return this.init.compress ? [BLOCKS_PROTOCOL_ZSTD, BLOCKS_PROTOCOL] : [BLOCKS_PROTOCOL]
  }

  async start (): Promise<void> {
    // libp2p counts streams per protocol; the server holds a peer to one total over both.
    const limits = { maxInboundStreams: this.init.maxInboundStreams, maxOutboundStreams: this.init.streamsPerProvider * 4 }
    for (const protocol of this.protocols) {
      const compressed = protocol === BLOCKS_PROTOCOL_ZSTD
      await this.#c.registrar.handle(protocol, (stream, connection) => { void this.#server.serve(stream, connection, { compressed }) }, limits)
    }
    this.#started = true
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    for (const protocol of this.protocols) await this.#c.registrar.unhandle(protocol)
    this.#server.clearLanded()
  }

  isBanned (peer: PeerId | string): boolean {
    return this.#bans.has(peer)
  }

  ban (peer: PeerId | string, reason: string): void {
    this.#bans.add(peer, reason)
  }

  get banned (): string[] {
    return this.#bans.list()
  }

  /** Keeps a verified block for peers fetching the same layer (bounded in bytes and time, oldest dropped first). */
  landed (key: string, bytes: Uint8Array): void {
    this.#server.landed(key, bytes)
  }

  /** Blocks kept for peers fetching the same layer, and their bytes. */
  get landedStats (): { blocks: number, bytes: number } {
    return this.#server.landedStats
  }

  /** A BlockSource that spreads wants over `providers`, verifying every block. */
  source (providers: readonly PeerId[], opts: { onBlock?: (bytes: number) => void, self?: PeerId, refill?: Refill } = {}): PeerBlockSource {
    const source: PeerBlockSource = new PeerBlockSource({
      init: this.init,
      counters: this.counters,
      isBanned: (peer) => this.#bans.has(peer),
      ban: (peer, reason) => { this.#bans.add(peer, reason) },
      landed: (key, bytes) => { this.#server.landed(key, bytes) },
      landedBlock: (key) => this.#server.landedBlock(key),
      dialProtocol: async (peer, protocols, o) => await this.#c.dialProtocol(peer, protocols, o),
      protocols: this.protocols,
      onWireBytes: (n) => { this.counters.wireBytesFromPeers += n },
      logger: this.#log
    }, providers, { ...opts, onClose: () => this.#sources.delete(source) })
    this.#sources.add(source)
    return source
  }
}
