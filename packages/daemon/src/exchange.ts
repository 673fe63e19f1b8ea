import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { Uint8ArrayList } from 'uint8arraylist'
import { verifyBlock, BlockMismatchError } from '@strata/chunker'
import type { BlockSource, Store } from '@strata/store'
import {
  BLOCKS_PROTOCOL, MAX_MESSAGE_SIZE, MAX_WANTS_PER_MESSAGE, decodeMessage, encodeBlockHeader, encodeDontHave, encodeFrameLength, encodeWant
} from './codec.ts'
import { BlockUnavailableError, PeerLimitError, PeerTimeoutError, ProtocolViolationError } from './errors.ts'
import { FrameReader } from './frame-reader.ts'
import { RateLimiter } from './rate.ts'
import { scavenges } from './scavenge.ts'

/** Banned peers remembered at once. */
export const MAX_BANS = 10_000

/**
 * Answers a fetching stream holds decoded and not yet read before it is reset. The
 * session reads each muxer chunk's answers before the next chunk is handed over,
 * so this is only reached by a peer that sends what nobody asked for.
 */
const CLIENT_QUEUED_BYTES = 16 * 1024 * 1024

/** Unread bytes a serving stream buffers before it is reset (the library default is 4 MiB). */
export const SERVE_READ_BUFFER = 256 * 1024
/** Answers are sent together once this many bytes wait (or the next lookup is not done yet). */
const COALESCE_BYTES = 256 * 1024

/** What the block exchange needs from the libp2p node. */
export interface ExchangeComponents {
  store: Pick<Store, 'getBlock'>
  registrar: {
    handle(protocol: string, handler: (stream: Stream, connection: Connection) => void | Promise<void>, opts?: { maxInboundStreams?: number, maxOutboundStreams?: number }): Promise<void>
    unhandle(protocol: string): Promise<void>
  }
  dialProtocol(peer: PeerId, protocol: string, opts?: { signal?: AbortSignal }): Promise<Stream>
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
  /** How long a peer's want waits for a block this node is fetching at that moment. Default 3 000 ms. */
  landingWaitMs?: number
  /** Block bytes a second served to one peer, over all its streams. Default 256 MiB/s (above what one Noise connection carries). */
  servePeerBytesPerSecond?: number
  /** Bytes one peer may be sent at once after a quiet spell. Default 8 MiB. */
  servePeerBurstBytes?: number
}

export interface ExchangeCounters {
  bytesFromPeers: number
  bytesToPeers: number
  blocksFromPeers: number
  blocksToPeers: number
  blocksRejected: number
  /** Blocks whose sending was delayed by a peer's serving rate. */
  blocksThrottled: number
}

export interface FetchStats {
  /** Providers that sent at least one block. */
  providersUsed: number
  bytes: number
  blocks: number
}

/** Serves `/strata/blocks/1.0.0` from the store and fetches blocks from providers. */
export class BlockExchange {
  readonly counters: ExchangeCounters = { bytesFromPeers: 0, bytesToPeers: 0, blocksFromPeers: 0, blocksToPeers: 0, blocksRejected: 0, blocksThrottled: 0 }
  readonly #c: ExchangeComponents
  readonly #log: Logger
  readonly #outstanding = new Map<string, number>()
  readonly #bans = new Map<string, number>()
  /** Block streams each peer has open with us, over all its connections. */
  readonly #streams = new Map<string, number>()
  readonly #rate: RateLimiter
  /** Fetches running on this node: a peer asking for a block one of them is fetching waits for it. */
  readonly #sources = new Set<PeerBlockSource>()
  /** Blocks fetched lately, newest last: a layer still being fetched serves what has landed. */
  readonly #landed = new Map<string, Uint8Array>()
  #landedSize = 0
  readonly init: Required<ExchangeInit>
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
      landingWaitMs: init.landingWaitMs ?? 3000,
      servePeerBytesPerSecond: init.servePeerBytesPerSecond ?? 256 * 1024 * 1024,
      servePeerBurstBytes: init.servePeerBurstBytes ?? 8 * 1024 * 1024
    }
    this.#rate = new RateLimiter(this.init.servePeerBytesPerSecond, Math.max(this.init.servePeerBurstBytes, MAX_MESSAGE_SIZE))
    if (this.init.wantBatch < 1 || this.init.wantBatch > MAX_WANTS_PER_MESSAGE) throw new TypeError(`wantBatch must be 1..${MAX_WANTS_PER_MESSAGE}`)
  }

  async start (): Promise<void> {
    await this.#c.registrar.handle(BLOCKS_PROTOCOL, (stream, connection) => { void this.#serve(stream, connection) }, {
      maxInboundStreams: this.init.maxInboundStreams,
      maxOutboundStreams: this.init.streamsPerProvider * 4
    })
    this.#started = true
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.#c.registrar.unhandle(BLOCKS_PROTOCOL)
  }

  isBanned (peer: PeerId | string): boolean {
    const key = peer.toString()
    const until = this.#bans.get(key)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.#bans.delete(key)
    return false
  }

  ban (peer: PeerId | string, reason: string): void {
    const key = peer.toString()
    const now = Date.now()
    // Peer ids cost nothing to make: keep the list bounded, expired bans first, then the oldest.
    if (!this.#bans.has(key) && this.#bans.size >= MAX_BANS) {
      for (const [k, until] of this.#bans) if (until <= now) this.#bans.delete(k)
      while (this.#bans.size >= MAX_BANS) this.#bans.delete(this.#bans.keys().next().value!)
    }
    this.#bans.delete(key)
    this.#bans.set(key, now + this.init.banMs)
    this.#log.warn({ peer: key, reason }, 'peer banned')
  }

  /** Keeps a verified block for peers fetching the same layer (bounded, oldest dropped first). */
  landed (key: string, bytes: Uint8Array): void {
    if (this.init.landedBytes <= 0 || this.#landed.has(key)) return
    this.#landed.set(key, bytes)
    this.#landedSize += bytes.length
    while (this.#landedSize > this.init.landedBytes) {
      const [k, v] = this.#landed.entries().next().value!
      this.#landed.delete(k)
      this.#landedSize -= v.length
    }
  }

  get banned (): string[] {
    return [...this.#bans.keys()].filter((p) => this.isBanned(p))
  }

  /**
   * Answers want-lists until the client closes its side: a BLOCK or a DONT_HAVE per
   * CID, in the order the lookups finish. Any misbehaviour or silence past the
   * limits aborts the stream.
   */
  async #serve (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    let counted = 0
    const streams = (this.#streams.get(peer) ?? 0) + 1
    this.#streams.set(peer, streams)
    try {
      if (this.isBanned(peer)) throw new PeerLimitError(`peer ${peer} is banned`)
      // libp2p counts streams per connection; a peer with several connections is held to the same total.
      if (streams > this.init.maxInboundStreams) throw new PeerLimitError(`peer ${peer} has ${streams} block streams open, limit ${this.init.maxInboundStreams}`)
      // A client sends only want-lists (~16 KiB each, two in flight): more unread bytes than this is a flood.
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE, maxBufferSize: SERVE_READ_BUFFER })
      for (let first = true; ; first = false) {
        let frame: Uint8ArrayList
        try {
          frame = await lp.read({ signal: AbortSignal.timeout(first ? this.init.firstByteTimeoutMs : this.init.idleTimeoutMs) })
        } catch (err) {
          // The client closed its side: it wants nothing more.
          if (!first && stream.readStatus !== 'readable' && (err as Error).name !== 'TimeoutError') break
          throw err
        }
        const msg = decodeMessage(frame.subarray())
        if (msg.type !== 'want') throw new ProtocolViolationError(`expected a want-list, got ${msg.type}`)
        const outstanding = this.#outstanding.get(peer) ?? 0
        if (outstanding + msg.cids.length > this.init.maxOutstandingWants) {
          throw new PeerLimitError(`peer ${peer} has ${outstanding} wants outstanding, limit ${this.init.maxOutstandingWants}`)
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
          await sendRaw(stream, out.sublist(), this.init.idleTimeoutMs)
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
              this.counters.blocksThrottled++
              await flush()
              await new Promise<void>((resolve) => setTimeout(resolve, wait))
            }
            appendFrame(out, encodeBlockHeader(next.cid), next.bytes)
            this.counters.bytesToPeers += next.bytes.length
            scavenges.moved(next.bytes.length)
            this.counters.blocksToPeers++
          }
          answers++
          if (out.byteLength >= COALESCE_BYTES) await flush()
        }
        await flush()
      }
      await stream.close({ signal: AbortSignal.timeout(this.init.idleTimeoutMs) })
    } catch (err) {
      this.#log.debug({ err, peer }, 'block stream aborted')
      stream.abort(err as Error)
    } finally {
      const open = (this.#streams.get(peer) ?? 1) - 1
      if (open <= 0) this.#streams.delete(peer)
      else this.#streams.set(peer, open)
      const left = (this.#outstanding.get(peer) ?? 0) - counted
      if (left <= 0) this.#outstanding.delete(peer)
      else this.#outstanding.set(peer, left)
    }
  }

  /** A block from the blocks landed lately, else from the store (which verifies it); undefined when neither has it. */
  async #lookup (cid: CID, peer: string): Promise<Uint8Array | undefined> {
    const key = cid.toString()
    const landed = this.#landed.get(key)
    if (landed !== undefined) return landed
    try {
      return await this.#c.store.getBlock(cid)
    } catch (err) {
      // A block this node is fetching right now is worth a short wait: peers fetching
      // the same layer split its blocks between them (see PeerBlockSource).
      for (const source of this.#sources) {
        const coming = source.landing(key)
        if (coming === undefined) continue
        const { promise, resolve } = Promise.withResolvers<undefined>()
        const timer = setTimeout(() => { resolve(undefined) }, this.init.landingWaitMs)
        try {
          const bytes = await Promise.race([coming, promise])
          if (bytes !== undefined) return bytes
        } catch {
          // That fetch failed: the asking peer goes elsewhere.
        } finally {
          clearTimeout(timer)
        }
      }
      this.#log.debug({ err, cid: key, peer }, 'not serving a block')
      return undefined
    }
  }

  /** A BlockSource that spreads wants over `providers`, verifying every block. */
  source (providers: readonly PeerId[], opts: { onBlock?: (bytes: number) => void, self?: PeerId } = {}): PeerBlockSource {
    const source = new PeerBlockSource(this, providers, this.#c, this.#log, opts.onBlock, opts.self, () => this.#sources.delete(source))
    this.#sources.add(source)
    return source
  }
}

interface Want {
  cid: CID
  key: string
  /** Providers that answered DONT_HAVE for it. */
  tried: Set<string>
  /** Failed requests (timeout, broken stream): they do not rule a provider out. */
  attempts: number
  /** Providers whose stream failed while it was asked: others are asked first. */
  failed: Set<string>
  done: boolean
  waiters: Array<{ resolve: (b: Uint8Array) => void, reject: (e: Error) => void }>
  /** Who fetches it from a full provider when peers fetching the same layer split it (a peer id, or '' for this node). */
  owner: string
  ownerVersion: number
  /** Made when a peer asks this node for the block while it is on its way. */
  landing?: PromiseWithResolvers<Uint8Array>
}

/** One stream to one provider, carrying many want-lists; answers come back in order. */
interface Session {
  provider: Provider
  inflight: Map<string, Want>
  send: (wants: Want[]) => void
  dead: boolean
}

/** What one fetch knows of one provider. */
interface Provider {
  peer: PeerId
  key: string
  sessions: Session[]
  opening: number
  blocks: number
  dontHaves: number
  /** Sessions in a row that failed before any answer came back (a block resets it). */
  failures: number
  /** No new session to it before this time (performance.now()): the backoff after a failed one. */
  retryAt: number
  /** Not asked again during this fetch: it has none of the layer, or cannot be reached. */
  dropped: boolean
  /** Fetching the same layer itself: asked only for the blocks it owns. */
  partial: boolean
}

/** DONT_HAVEs without a single block after which a provider is taken to hold none of the layer. */
const DROP_AFTER_DONT_HAVES = 64
/** Sessions in a row that failed before any answer, after which a provider is given up for the fetch. */
const MAX_FAILURES = 3
/** The wait before a new session to a provider whose last one failed: doubled with each failure in a row. */
const RETRY_BASE_MS = 100
/**
 * How long a session with nothing asked waits for wants before it ends. Wants come in
 * bursts as a restore reads ahead; a session that ended at the first lull was opened
 * again at the next burst, and a fan-out of eight opened ~7,000 streams that never
 * carried a want-list.
 */
const SESSION_LINGER_MS = 1000

/**
 * Fetches blocks for one restore from a changing set of providers. Each provider
 * gets up to `streamsPerProvider` long-lived streams; wants go to the least-loaded
 * stream in batches, pipelined (`2 * wantBatch` unanswered per stream), so every
 * provider's pipeline stays full. A provider that answers only DONT_HAVE is dropped
 * for this fetch; a timeout or broken stream sends its wants elsewhere without ruling
 * the provider out (it counts against the block's attempts).
 *
 * Peers fetching the same layer at once (announced by gossip) split it: each block
 * has an owner among them and this node, by rendezvous hash, the same on every
 * peer. A block is asked from full providers by its owner only; the others ask the
 * owner, whose server waits a moment for the block to land. So each block crosses
 * the producer's link about once however many peers fetch it, and a DONT_HAVE from
 * the owner just sends the block to the full providers.
 */
export class PeerBlockSource implements BlockSource {
  /** Every block is checked against its CID in #session, before it is handed out, written or counted. */
  readonly verified = true
  readonly stats: FetchStats = { providersUsed: 0, bytes: 0, blocks: 0 }
  readonly #ex: BlockExchange
  readonly #providers = new Map<string, Provider>()
  readonly #c: ExchangeComponents
  readonly #log: Logger
  readonly #onBlock: ((bytes: number) => void) | undefined
  #queue: Want[] = []
  readonly #pending = new Map<string, Want>()
  readonly #abort = new AbortController()
  #scheduled = false
  /** Set while a dispatch waits for a provider's backoff to end. */
  #retryTimer: NodeJS.Timeout | undefined
  readonly #self: string
  readonly #onClose: () => void
  /** Bumped when the set of peers sharing the fetch changes: owners are worked out again. */
  #sharing = 0

  constructor (ex: BlockExchange, providers: readonly PeerId[], c: ExchangeComponents, log: Logger, onBlock: ((bytes: number) => void) | undefined, self: PeerId | undefined, onClose: () => void) {
    this.#ex = ex
    this.#c = c
    this.#log = log
    this.#onBlock = onBlock
    this.#self = self?.toString() ?? ''
    this.#onClose = onClose
    for (const p of providers) this.#add(p)
  }

  #add (peer: PeerId): boolean {
    const key = peer.toString()
    if (this.#providers.has(key)) return false
    this.#providers.set(key, { peer, key, sessions: [], opening: 0, blocks: 0, dontHaves: 0, failures: 0, retryAt: 0, dropped: false, partial: false })
    return true
  }

  /** Adds a peer fetching the same layer: it is asked for the blocks it owns. */
  addProvider (peer: PeerId): void {
    if (this.#abort.signal.aborted || peer.toString() === this.#self) return
    this.#add(peer)
    const p = this.#providers.get(peer.toString())!
    if (p.partial) return
    p.partial = true
    this.#sharing++
    this.#schedule()
  }

  /** The bytes of a block this fetch is waiting for, when they land; undefined when it is not waiting for it. */
  landing (key: string): Promise<Uint8Array> | undefined {
    const w = this.#pending.get(key)
    if (w === undefined || w.done) return undefined
    if (w.landing === undefined) {
      w.landing = Promise.withResolvers<Uint8Array>()
      w.landing.promise.catch(() => {})
    }
    return w.landing.promise
  }

  /** Peers this fetch still asks. */
  get providers (): PeerId[] {
    return [...this.#providers.values()].filter((p) => !p.dropped).map((p) => p.peer)
  }

  /** Blocks each provider sent, and the providers dropped for holding none of the layer. */
  get providerStats (): Array<{ peer: string, blocks: number, dontHaves: number, dropped: boolean }> {
    return [...this.#providers.values()].map((p) => ({ peer: p.key, blocks: p.blocks, dontHaves: p.dontHaves, dropped: p.dropped }))
  }

  /** Ends every stream this source has open. */
  close (): void {
    this.#abort.abort(new Error('block source closed'))
    clearTimeout(this.#retryTimer)
    for (const w of this.#pending.values()) w.landing?.reject(new Error('block source closed'))
    this.#onClose()
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    opts.signal?.throwIfAborted()
    const key = cid.toString()
    const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>()
    let want = this.#pending.get(key)
    if (want === undefined) {
      want = { cid, key, tried: new Set(), attempts: 0, failed: new Set(), done: false, waiters: [], owner: '', ownerVersion: -1 }
      this.#pending.set(key, want)
      this.#queue.push(want)
      this.#schedule()
    }
    want.waiters.push({ resolve, reject })
    if (opts.signal === undefined) return await promise
    const signal = opts.signal
    const onAbort = (): void => reject(signal.reason as Error)
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      return await promise
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  #schedule (): void {
    if (this.#scheduled) return
    this.#scheduled = true
    // Gather the wants of one tick into batches.
    setImmediate(() => {
      this.#scheduled = false
      this.#dispatch()
    })
  }

  /** Wants a session may have unanswered: one batch being answered, one waiting behind it. */
  get #window (): number {
    return this.#ex.init.wantBatch * 2
  }

  #usable (p: Provider): boolean {
    return !p.dropped && !this.#ex.isBanned(p.peer)
  }

  /**
   * The peer sharing this fetch that asks full providers for `w` ('' for this node).
   * An owner that has since been dropped or banned owns nothing: the block is owned
   * again among those left, else it would wait for that peer for ever.
   */
  #owner (w: Want, usable: Provider[]): string {
    if (w.ownerVersion === this.#sharing && (w.owner === '' || this.#usable(this.#providers.get(w.owner)!))) return w.owner
    let best = ''
    let bestScore = rank(w.key, this.#self)
    for (const p of usable) {
      if (!p.partial) continue
      const score = rank(w.key, p.key)
      if (score > bestScore) {
        best = p.key
        bestScore = score
      }
    }
    w.owner = best
    w.ownerVersion = this.#sharing
    return best
  }

  /**
   * Whether `w` may go to `p` now: never after p's DONT_HAVE; after p failed only
   * when no one else is left; a peer sharing the fetch only for the blocks it owns
   * (or when no full provider is left); full providers only once the owner, if it
   * is another peer, has had its chance.
   */
  #canAsk (w: Want, p: Provider, usable: Provider[]): boolean {
    if (w.tried.has(p.key)) return false
    if (w.failed.has(p.key) && usable.some((q) => !q.partial && !w.tried.has(q.key) && !w.failed.has(q.key))) return false
    const owner = this.#owner(w, usable)
    // An owner whose last session failed is not waited for: full providers are asked at once.
    const ownerWaiting = owner !== '' && !w.tried.has(owner) && !w.failed.has(owner) && this.#providers.get(owner)?.failures === 0
    if (p.partial) return (owner === p.key && ownerWaiting) || !usable.some((q) => !q.partial && !w.tried.has(q.key))
    return !ownerWaiting
  }

  #dispatch (): void {
    if (this.#abort.signal.aborted) return
    const usable = [...this.#providers.values()].filter((p) => this.#usable(p))
    // Fail the wants that no provider is left to answer.
    const hopeless = (w: Want): boolean => w.attempts >= this.#ex.init.maxAttempts || !usable.some((p) => !w.tried.has(p.key))
    if (this.#queue.some(hopeless)) {
      const keep: Want[] = []
      for (const w of this.#queue) {
        if (hopeless(w)) this.#fail(w, new BlockUnavailableError(w.key, w.tried.size))
        else keep.push(w)
      }
      this.#queue = keep
    }
    const now = performance.now()
    let retryAt = Infinity
    while (this.#queue.length > 0) {
      let best: Session | undefined
      for (const p of usable) {
        if (p.dropped || !this.#queue.some((w) => this.#canAsk(w, p, usable))) continue
        const sessions = p.sessions.filter((x) => !x.dead)
        const idle = sessions.find((x) => x.inflight.size === 0)
        if (idle === undefined && sessions.length + p.opening < this.#ex.init.streamsPerProvider) {
          // A provider whose last session failed is asked again only after its backoff.
          if (p.retryAt <= now) {
            this.#open(p)
            continue
          }
          retryAt = Math.min(retryAt, p.retryAt)
        }
        for (const x of sessions) if (x.inflight.size < this.#window && (best === undefined || x.inflight.size < best.inflight.size)) best = x
      }
      if (best === undefined) break
      const room = Math.min(this.#ex.init.wantBatch, this.#window - best.inflight.size)
      const batch: Want[] = []
      const rest: Want[] = []
      for (const w of this.#queue) {
        if (batch.length < room && this.#canAsk(w, best.provider, usable)) batch.push(w)
        else rest.push(w)
      }
      if (batch.length === 0) break
      this.#queue = rest
      best.send(batch)
    }
    if (retryAt !== Infinity && this.#queue.length > 0 && this.#retryTimer === undefined) {
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined
        this.#dispatch()
      }, Math.max(1, retryAt - now))
    }
  }

  #fail (w: Want, err: Error): void {
    w.done = true
    w.landing?.reject(err)
    this.#pending.delete(w.key)
    for (const x of w.waiters) x.reject(err)
  }

  /** Opens a session to `p`; it joins the pool once the stream is up. */
  #open (p: Provider): void {
    p.opening++
    void this.#session(p).finally(() => this.#dispatch())
  }

  async #session (p: Provider): Promise<void> {
    const k = p.key
    const session: Session = { provider: p, inflight: new Map(), send: () => {}, dead: false }
    let stream: Stream | undefined
    let frames: FrameReader | undefined
    let opened = false
    let answered = false
    const ms = this.#ex.init.firstByteTimeoutMs
    // One watchdog per session instead of a timer per frame: it fires when wants
    // are out and nothing has come back for `ms`.
    let lastAnswer = performance.now()
    const idle = new AbortController()
    const watchdog = setInterval(() => {
      if (session.inflight.size > 0 && performance.now() - lastAnswer > ms) idle.abort(new PeerTimeoutError(`peer ${k} sent nothing for ${ms} ms`))
    }, Math.max(10, Math.min(1000, ms / 4)))
    const readSignal = AbortSignal.any([this.#abort.signal, idle.signal])
    try {
      const dialSignal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(ms)])
      stream = await this.#c.dialProtocol(p.peer, BLOCKS_PROTOCOL, { signal: dialSignal })
      const s = stream
      frames = new FrameReader(s, { maxDataLength: MAX_MESSAGE_SIZE, maxQueued: CLIENT_QUEUED_BYTES })
      let wake: (() => void) | undefined
      let writing = Promise.resolve()
      session.send = (wants) => {
        if (session.inflight.size === 0) lastAnswer = performance.now()
        for (const w of wants) session.inflight.set(w.key, w)
        const out = new Uint8ArrayList()
        appendFrame(out, encodeWant(wants.map((w) => w.cid)))
        writing = writing.then(async () => { await sendRaw(s, out, this.#ex.init.idleTimeoutMs, this.#abort.signal) })
        writing.catch(() => {})
        wake?.()
      }
      p.opening--
      opened = true
      p.sessions.push(session)
      this.#dispatch()
      let idleSince = performance.now()
      while (!this.#abort.signal.aborted) {
        if (session.inflight.size === 0) {
          // Nothing asked: wait for wants, or end the session when it has waited long enough with nothing left to do for it.
          if (p.dropped || (performance.now() - idleSince >= SESSION_LINGER_MS && !this.#queue.some((w) => !w.tried.has(k)))) break
          const { promise, resolve } = Promise.withResolvers<void>()
          wake = resolve
          const timer = setTimeout(resolve, 50)
          await promise
          clearTimeout(timer)
          wake = undefined
          continue
        }
        const frame = await frames.next(readSignal)
        if (frame === undefined) throw new ProtocolViolationError(`peer ${k} closed the stream with ${session.inflight.size} wants unanswered`)
        lastAnswer = performance.now()
        answered = true
        const whole = frame.subarray()
        const msg = decodeMessage(whole)
        if (msg.type === 'want') throw new ProtocolViolationError('a server sent a want-list')
        const w = session.inflight.get(msg.cid.toString())
        if (w === undefined) throw new ProtocolViolationError(`peer ${k} answered a block it was not asked for`)
        session.inflight.delete(w.key)
        if (session.inflight.size === 0) idleSince = performance.now()
        if (msg.type === 'dont-have') {
          p.dontHaves++
          if (p.blocks === 0 && p.dontHaves >= DROP_AFTER_DONT_HAVES && !p.dropped && !p.partial) {
            p.dropped = true
            this.#log.debug({ peer: k, dontHaves: p.dontHaves }, 'provider holds none of the layer; not asking it again')
          }
          if (!w.done) {
            w.tried.add(k)
            this.#queue.push(w)
          }
          this.#schedule()
          continue
        }
        try {
          verifyBlock(w.cid, msg.bytes)
        } catch (err) {
          if (!(err instanceof BlockMismatchError)) throw err
          this.#ex.counters.blocksRejected++
          this.#ex.ban(p.peer, `sent wrong bytes for ${w.key}`)
          w.tried.add(k)
          this.#queue.push(w)
          throw err
        }
        p.blocks++
        p.failures = 0
        if (w.done) continue
        // A message that came in several pieces was joined into memory of its own and
        // is kept as it is; one that is a view of a buffer shared with others is copied.
        const own = whole.byteOffset === 0 && whole.buffer.byteLength === whole.byteLength
        const bytes = own ? msg.bytes : Uint8Array.prototype.slice.call(msg.bytes)
        this.#ex.counters.bytesFromPeers += bytes.length
        scavenges.moved(bytes.length)
        this.#ex.counters.blocksFromPeers++
        this.stats.bytes += bytes.length
        this.stats.blocks++
        if (p.blocks === 1) this.stats.providersUsed++
        this.#onBlock?.(bytes.length)
        this.#ex.landed(w.key, bytes)
        w.done = true
        this.#pending.delete(w.key)
        w.landing?.resolve(bytes)
        for (const x of w.waiters) x.resolve(bytes)
        if (session.inflight.size <= this.#ex.init.wantBatch) this.#schedule()
      }
      session.dead = true
      await writing
      await stream.close({ signal: AbortSignal.timeout(this.#ex.init.idleTimeoutMs) }).catch(() => {})
    } catch (err) {
      this.#log.debug({ err, peer: k, left: session.inflight.size }, 'block session failed; asking elsewhere')
      stream?.abort(err as Error)
      // A session that failed before any answer (a peer gone, a stream refused) counts
      // against the provider and delays the next one, so that a dead peer is not dialled
      // in a loop; a few such failures in a row drop it for this fetch.
      if (!answered) {
        p.failures++
        p.retryAt = performance.now() + RETRY_BASE_MS * 2 ** (p.failures - 1)
        if (p.failures >= MAX_FAILURES && !p.dropped) {
          p.dropped = true
          this.#log.debug({ peer: k, failures: p.failures }, 'provider keeps failing; not asking it again')
        }
      }
    } finally {
      clearInterval(watchdog)
      frames?.close()
      session.dead = true
      if (!opened) p.opening--
      // Only failures count against a block: a DONT_HAVE just sends it elsewhere.
      for (const w of session.inflight.values()) {
        if (w.done) continue
        w.attempts++
        w.failed.add(k)
        this.#queue.push(w)
      }
      session.inflight.clear()
      p.sessions = p.sessions.filter((x) => x !== session)
    }
  }
}

/** Appends one length-prefixed message made of `parts`. */
function appendFrame (out: Uint8ArrayList, ...parts: Array<Uint8Array | Uint8ArrayList>): void {
  out.append(encodeFrameLength(parts.reduce((n, p) => n + p.byteLength, 0)))
  for (const p of parts) out.append(p)
}

/** Writes bytes, waiting for the stream to drain (at most `drainMs`) only when its buffer is full. */
async function sendRaw (stream: Stream, bytes: Uint8ArrayList, drainMs: number, signal?: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal: signal === undefined ? AbortSignal.timeout(drainMs) : AbortSignal.any([signal, AbortSignal.timeout(drainMs)]) })
}

/** A rendezvous score of (block, peer): every peer ranks the same way. FNV-1a over both strings. */
function rank (block: string, peer: string): number {
  let h = 0x811c9dc5
  for (const str of [block, peer]) {
    for (let i = 0; i < str.length; i++) {
      h ^= str.charCodeAt(i)
      h = Math.imul(h, 0x01000193)
    }
  }
  // A final mix: peer ids share long prefixes.
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  return h >>> 0
}
