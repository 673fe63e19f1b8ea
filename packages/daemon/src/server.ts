import type { Connection, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { Uint8ArrayList } from 'uint8arraylist'
import type { Store } from '@strata/store'
import { MAX_MESSAGE_SIZE, decodeMessage, encodeBlockHeader, encodeDontHave } from './codec.ts'
import { PeerLimitError, ProtocolViolationError } from './errors.ts'
import type { ExchangeCounters, ExchangeInit } from './exchange.ts'
import type { Landing } from './source.ts'
import { StreamCompressor } from './compression.ts'
import { RateLimiter } from './rate.ts'
import { scavenges } from './scavenge.ts'
import { appendFrame, sendRaw } from './wire.ts'

/** Unread bytes a serving stream buffers before it is reset (the library default is 4 MiB). */
export const SERVE_READ_BUFFER = 256 * 1024
/** Answers are sent together once this many bytes wait (or the next lookup is not done yet). */
const COALESCE_BYTES = 256 * 1024
/**
 * The same on a compressed stream, in bytes before compression: node_modules-like
 * blocks shrink to about a quarter, so a flush still fills about one muxer frame.
 */
const COMPRESSED_COALESCE_BYTES = 1024 * 1024

/** What the serving side needs. */
export interface BlockServerComponents {
  store: Pick<Store, 'getBlock'>
  isBanned(peer: string): boolean
  /**
   * The bytes of `cid` as they land from the fetches on this node that want it; when
   * none does yet, from one that `peer` shares and that fetches it for it. Empty when
   * no fetch here will get it.
   */
  landing(cid: CID, peer: string): Iterable<Landing>
  counters: ExchangeCounters
  logger: Logger
}

/**
 * The serving side of `/strata/blocks/1.1.0` and `1.0.0`: answers want-lists from the store and
 * from the blocks landed lately, paced per peer, within the per-peer limits.
 */
export class BlockServer {
  readonly #c: BlockServerComponents
  readonly #init: Required<ExchangeInit>
  readonly #log: Logger
  readonly #outstanding = new Map<string, number>()
  /** Block streams each peer has open with us, over all its connections. */
  readonly #streams = new Map<string, number>()
  readonly #rate: RateLimiter
  /** Blocks fetched lately with when they landed, oldest first: a layer still being fetched serves what has landed. */
  readonly #landed = new Map<string, { bytes: Uint8Array, at: number }>()
  #landedSize = 0
  #sweep: NodeJS.Timeout | undefined

  constructor (components: BlockServerComponents, init: Required<ExchangeInit>) {
    this.#c = components
    this.#init = init
    this.#log = components.logger
    this.#rate = new RateLimiter(init.servePeerBytesPerSecond, Math.max(init.servePeerBurstBytes, MAX_MESSAGE_SIZE))
  }

  /**
   * Keeps a verified block for peers fetching the same layer, bounded in bytes and in
   * time: peers sharing a fetch ask for a block within seconds of its landing, and once
   * the fetch is over the store has it (or nobody wants it). Without the time bound a
   * daemon kept its last `landedBytes` of fetched blocks for good, its RSS growing with
   * every layer fetched until the window was full.
   */
  landed (key: string, bytes: Uint8Array): void {
    if (this.#init.landedBytes <= 0 || this.#landed.has(key)) return
    this.#landed.set(key, { bytes, at: performance.now() })
    this.#landedSize += bytes.length
    while (this.#landedSize > this.#init.landedBytes) this.#dropOldest()
    this.#sweep ??= setTimeout(() => { this.#expire() }, this.#init.landedMs).unref()
  }

  /** A block landed lately, if it is still held. */
  landedBlock (key: string): Uint8Array | undefined {
    return this.#landed.get(key)?.bytes
  }

  /** Blocks held to serve peers fetching the same layer, and their bytes. */
  get landedStats (): { blocks: number, bytes: number } {
    return { blocks: this.#landed.size, bytes: this.#landedSize }
  }

  /** Drops what landed more than `landedMs` ago; comes back when the next one is due. */
  #expire (): void {
    this.#sweep = undefined
    const due = performance.now() - this.#init.landedMs
    for (let head = this.#landed.values().next().value; head !== undefined && head.at <= due; head = this.#landed.values().next().value) this.#dropOldest()
    const head = this.#landed.values().next().value
    if (head !== undefined) this.#sweep = setTimeout(() => { this.#expire() }, Math.max(1, head.at + this.#init.landedMs - performance.now())).unref()
  }

  #dropOldest (): void {
    const [k, v] = this.#landed.entries().next().value!
    this.#landed.delete(k)
    this.#landedSize -= v.bytes.length
  }

  /** Forgets every landed block (the exchange stops). */
  clearLanded (): void {
    clearTimeout(this.#sweep)
    this.#sweep = undefined
    this.#landed.clear()
    this.#landedSize = 0
  }

  /**
   * Answers want-lists until the client closes its side: a BLOCK or a DONT_HAVE per
   * CID, in the order the lookups finish. Any misbehaviour or silence past the
   * limits aborts the stream. `compressed`: what it sends goes through one zstd
   * stream (`/strata/blocks/1.1.0`).
   */
  async serve (stream: Stream, connection: Connection, opts: { compressed?: boolean } = {}): Promise<void> {
    const init = this.#init
    const peer = connection.remotePeer.toString()
    let counted = 0
    let compressor: StreamCompressor | undefined
    const streams = (this.#streams.get(peer) ?? 0) + 1
    this.#streams.set(peer, streams)
    try {
      if (this.#c.isBanned(peer)) throw new PeerLimitError(`peer ${peer} is banned`)
      // libp2p counts streams per connection; a peer with several connections is held to the same total.
      if (streams > init.maxInboundStreams) throw new PeerLimitError(`peer ${peer} has ${streams} block streams open, limit ${init.maxInboundStreams}`)
      // A client sends only want-lists (two in flight): more unread bytes than this is a flood.
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE, maxBufferSize: SERVE_READ_BUFFER })
      const counters = this.#c.counters
      if (opts.compressed === true) compressor = new StreamCompressor(stream, { drainMs: init.idleTimeoutMs, onBytes: (n) => { counters.wireBytesToPeers += n } })
      const z = compressor
      const coalesce = z !== undefined ? COMPRESSED_COALESCE_BYTES : COALESCE_BYTES
      const send = async (bytes: Uint8ArrayList): Promise<void> => {
        if (z !== undefined) {
          await z.write(bytes)
          return
        }
        counters.wireBytesToPeers += bytes.byteLength
        await sendRaw(stream, bytes, init.idleTimeoutMs)
      }
      for (let first = true; ; first = false) {
        let frame: Uint8ArrayList
        try {
          frame = await lp.read({ signal: AbortSignal.timeout(first ? init.firstByteTimeoutMs : init.idleTimeoutMs) })
        } catch (err) {
          // The client closed its side: it wants nothing more.
          if (!first && stream.readStatus !== 'readable' && (err as Error).name !== 'TimeoutError') break
          throw err
        }
        const msg = decodeMessage(frame.subarray())
        if (msg.type !== 'want') throw new ProtocolViolationError(`expected a want-list, got ${msg.type}`)
        const outstanding = this.#outstanding.get(peer) ?? 0
        if (outstanding + msg.cids.length > init.maxOutstandingWants) {
          throw new PeerLimitError(`peer ${peer} has ${outstanding} wants outstanding, limit ${init.maxOutstandingWants}`)
        }
        counted += msg.cids.length
        this.#outstanding.set(peer, outstanding + msg.cids.length)
        // The whole want-list is looked up at once (the store answers it with one index
        // read) and answered as the lookups finish: a block still landing here holds up
        // no other answer.
        const ready: Array<{ cid: CID, bytes: Uint8Array | undefined }> = []
        let wake: (() => void) | undefined
        for (const cid of msg.cids) {
          const done = (bytes: Uint8Array | undefined): void => { ready.push({ cid, bytes }); wake?.() }
          this.#lookup(cid, peer).then(done, () => { done(undefined) })
        }
        // Answers go out several to a write, so a muxer frame, a Noise message and a
        // syscall carry many blocks (and the client sends fewer window updates).
        const out = new Uint8ArrayList()
        let answers = 0
        const flush = async (): Promise<void> => {
          if (out.byteLength === 0) return
          await send(out.sublist())
          out.consume(out.byteLength)
          this.#outstanding.set(peer, (this.#outstanding.get(peer) ?? answers) - answers)
          counted -= answers
          answers = 0
        }
        for (let left = msg.cids.length; left > 0;) {
          const next = ready.shift()
          if (next === undefined) {
            await flush()
            const { promise, resolve } = Promise.withResolvers<void>()
            wake = resolve
            if (ready.length === 0) await promise
            wake = undefined
            continue
          }
          left--
          if (next.bytes === undefined) {
            appendFrame(out, encodeDontHave(next.cid))
          } else {
            const wait = this.#rate.take(peer, next.bytes.length)
            if (wait > 0) {
              this.#c.counters.blocksThrottled++
              await flush()
              await new Promise<void>((resolve) => setTimeout(resolve, wait))
            }
            appendFrame(out, encodeBlockHeader(next.cid), next.bytes)
            this.#c.counters.bytesToPeers += next.bytes.length
            scavenges.moved(next.bytes.length)
            this.#c.counters.blocksToPeers++
          }
          answers++
          if (out.byteLength >= coalesce) await flush()
        }
        await flush()
      }
      await compressor?.end()
      await stream.close({ signal: AbortSignal.timeout(init.idleTimeoutMs) })
    } catch (err) {
      this.#log.debug({ event: 'block-stream-aborted', err, peer }, 'block stream aborted')
      stream.abort(err as Error)
    } finally {
      compressor?.close()
      const open = (this.#streams.get(peer) ?? 1) - 1
      if (open <= 0) this.#streams.delete(peer)
      else this.#streams.set(peer, open)
      const left = (this.#outstanding.get(peer) ?? 0) - counted
      if (left <= 0) this.#outstanding.delete(peer)
      else this.#outstanding.set(peer, left)
    }
  }

  /** The bytes of a block on its way, `landingWaitMs` at a time for as long as its fetch says; undefined when they do not come. */
  async #await (coming: Landing): Promise<Uint8Array | undefined> {
    for (;;) {
      const { promise, resolve } = Promise.withResolvers<undefined>()
      const timer = setTimeout(() => { resolve(undefined) }, this.#init.landingWaitMs)
      try {
        const bytes = await Promise.race([coming.bytes, promise])
        if (bytes !== undefined) return bytes
      } catch {
        // That fetch failed: the asking peer goes elsewhere.
        return undefined
      } finally {
        clearTimeout(timer)
      }
      if (!coming.keepWaiting()) return undefined
    }
  }

  /** A block from the blocks landed lately, else from the store (which verifies it); undefined when neither has it. */
  async #lookup (cid: CID, peer: string): Promise<Uint8Array | undefined> {
    const key = cid.toString()
    const landed = this.#landed.get(key)
    if (landed !== undefined) return landed.bytes
    try {
      return await this.#c.store.getBlock(cid)
    } catch (err) {
      // A block this node is fetching right now is worth a wait: peers fetching
      // the same layer split its blocks between them (see PeerBlockSource).
      for (const coming of this.#c.landing(cid, peer)) {
        const bytes = await this.#await(coming)
        if (bytes !== undefined) return bytes
      }
      this.#log.debug({ err, cid: key, peer }, 'not serving a block')
      return undefined
    }
  }
}
