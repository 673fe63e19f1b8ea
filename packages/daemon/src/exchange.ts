import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { Uint8ArrayList } from 'uint8arraylist'
import { verifyBlock, BlockMismatchError } from '@strata/chunker'
import type { BlockSource, Store } from '@strata/store'
import {
  BLOCKS_PROTOCOL, MAX_MESSAGE_SIZE, MAX_WANTS_PER_MESSAGE, decodeMessage, encodeBlockHeader, encodeDontHave, encodeWant
} from './codec.ts'
import { BlockUnavailableError, PeerLimitError, PeerTimeoutError, ProtocolViolationError } from './errors.ts'
import { RateLimiter } from './rate.ts'

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
  /** CIDs the fetching side puts in one WANT. Default 32. */
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
  /** Blocks fetched lately, newest last: a layer still being fetched serves what has landed. */
  readonly #landed = new Map<string, Uint8Array>()
  #landedSize = 0
  readonly init: Required<ExchangeInit>
  #started = false

  constructor (components: ExchangeComponents, init: ExchangeInit = {}) {
    this.#c = components
    this.#log = components.logger.child({ component: 'exchange' })
    this.init = {
      wantBatch: init.wantBatch ?? 32,
      streamsPerProvider: init.streamsPerProvider ?? 4,
      maxInboundStreams: init.maxInboundStreams ?? 8,
      maxOutstandingWants: init.maxOutstandingWants ?? 1024,
      firstByteTimeoutMs: init.firstByteTimeoutMs ?? 10_000,
      idleTimeoutMs: init.idleTimeoutMs ?? 10_000,
      banMs: init.banMs ?? 10 * 60_000,
      maxAttempts: init.maxAttempts ?? 6,
      landedBytes: init.landedBytes ?? 64 * 1024 * 1024,
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

  ban (peer: PeerId, reason: string): void {
    this.#bans.set(peer.toString(), Date.now() + this.init.banMs)
    this.#log.warn({ peer: peer.toString(), reason }, 'peer banned')
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
   * CID, in order. Any misbehaviour or silence past the limits aborts the stream.
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
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE })
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
        for (const cid of msg.cids) {
          // A write that cannot drain within the idle time means the peer stopped reading.
          const signal = AbortSignal.timeout(this.init.idleTimeoutMs)
          let bytes: Uint8Array | undefined
          try {
            bytes = await this.#c.store.getBlock(cid, { signal })
          } catch (err) {
            bytes = this.#landed.get(cid.toString())
            if (bytes === undefined) this.#log.debug({ err, cid: cid.toString(), peer }, 'not serving a block')
          }
          if (bytes === undefined) {
            await lp.write(encodeDontHave(cid), { signal })
          } else {
            const wait = this.#rate.take(peer, bytes.length)
            if (wait > 0) {
              this.counters.blocksThrottled++
              await new Promise<void>((resolve) => setTimeout(resolve, wait))
            }
            await lp.write(new Uint8ArrayList(encodeBlockHeader(cid), bytes), { signal })
            this.counters.bytesToPeers += bytes.length
            this.counters.blocksToPeers++
          }
          this.#outstanding.set(peer, (this.#outstanding.get(peer) ?? 1) - 1)
          counted--
        }
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

  /** A BlockSource that spreads wants over `providers`, verifying every block. */
  source (providers: readonly PeerId[], opts: { onBlock?: (bytes: number) => void } = {}): PeerBlockSource {
    return new PeerBlockSource(this, providers, this.#c, this.#log, opts.onBlock)
  }
}

interface Want {
  cid: CID
  key: string
  tried: Set<string>
  attempts: number
  waiters: Array<{ resolve: (b: Uint8Array) => void, reject: (e: Error) => void }>
}

/** One stream to one provider, carrying many want-lists; answers come back in order. */
interface Session {
  peer: PeerId
  key: string
  inflight: Map<string, Want>
  send: (wants: Want[]) => void
  dead: boolean
}

/**
 * Fetches blocks for one restore from a fixed set of providers. Each provider gets
 * up to `streamsPerProvider` long-lived streams; wants go to the least-loaded one
 * in batches, pipelined (the next want-list travels while the last is answered).
 */
export class PeerBlockSource implements BlockSource {
  readonly stats: FetchStats = { providersUsed: 0, bytes: 0, blocks: 0 }
  readonly #ex: BlockExchange
  readonly #providers: PeerId[]
  readonly #c: ExchangeComponents
  readonly #log: Logger
  readonly #onBlock: ((bytes: number) => void) | undefined
  readonly #queue: Want[] = []
  readonly #pending = new Map<string, Want>()
  readonly #sessions = new Map<string, Session[]>()
  readonly #opening = new Map<string, number>()
  readonly #used = new Set<string>()
  readonly #abort = new AbortController()
  #scheduled = false

  constructor (ex: BlockExchange, providers: readonly PeerId[], c: ExchangeComponents, log: Logger, onBlock: ((bytes: number) => void) | undefined) {
    this.#ex = ex
    const seen = new Set<string>()
    this.#providers = []
    for (const p of providers) {
      if (seen.has(p.toString())) continue
      seen.add(p.toString())
      this.#providers.push(p)
    }
    this.#c = c
    this.#log = log
    this.#onBlock = onBlock
  }

  /** Adds a provider learned during the fetch (a peer fetching the same layer). */
  addProvider (peer: PeerId): void {
    if (this.#abort.signal.aborted || this.#providers.some((p) => p.equals(peer))) return
    this.#providers.push(peer)
    this.#schedule()
  }

  /** Ends every stream this source has open. */
  close (): void {
    this.#abort.abort(new Error('block source closed'))
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    opts.signal?.throwIfAborted()
    const key = cid.toString()
    const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>()
    let want = this.#pending.get(key)
    if (want === undefined) {
      want = { cid, key, tried: new Set(), attempts: 0, waiters: [] }
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

  #dispatch (): void {
    if (this.#abort.signal.aborted) return
    // Drop wants that no provider is left to answer.
    for (let i = 0; i < this.#queue.length; i++) {
      const w = this.#queue[i]!
      const left = this.#providers.some((p) => !this.#ex.isBanned(p) && !w.tried.has(p.toString()))
      if (!left || w.attempts >= this.#ex.init.maxAttempts) {
        this.#queue.splice(i--, 1)
        this.#fail(w, new BlockUnavailableError(w.key, w.tried.size))
      }
    }
    while (this.#queue.length > 0) {
      let best: Session | undefined
      for (const p of this.#providers) {
        const k = p.toString()
        if (this.#ex.isBanned(p) || !this.#queue.some((w) => !w.tried.has(k))) continue
        const sessions = (this.#sessions.get(k) ?? []).filter((x) => !x.dead)
        const open = sessions.length + (this.#opening.get(k) ?? 0)
        const idle = sessions.find((x) => x.inflight.size === 0)
        if (idle === undefined && open < this.#ex.init.streamsPerProvider) {
          this.#open(p)
          continue
        }
        for (const x of sessions) if (x.inflight.size < this.#window && (best === undefined || x.inflight.size < best.inflight.size)) best = x
      }
      if (best === undefined) return
      const batch: Want[] = []
      const room = Math.min(this.#ex.init.wantBatch, this.#window - best.inflight.size)
      for (let i = 0; i < this.#queue.length && batch.length < room; i++) {
        const w = this.#queue[i]!
        if (w.tried.has(best.key)) continue
        batch.push(w)
        this.#queue.splice(i--, 1)
      }
      if (batch.length === 0) return
      best.send(batch)
    }
  }

  #fail (w: Want, err: Error): void {
    this.#pending.delete(w.key)
    for (const x of w.waiters) x.reject(err)
  }

  #requeue (w: Want, peer: string): void {
    w.tried.add(peer)
    this.#queue.push(w)
  }

  /** Opens a session to `peer`; it joins the pool once the stream is up. */
  #open (peer: PeerId): void {
    const k = peer.toString()
    this.#opening.set(k, (this.#opening.get(k) ?? 0) + 1)
    void this.#session(peer).finally(() => this.#dispatch())
  }

  async #session (peer: PeerId): Promise<void> {
    const k = peer.toString()
    const session: Session = { peer, key: k, inflight: new Map(), send: () => {}, dead: false }
    let stream: Stream | undefined
    let opened = false
    try {
      const dialSignal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#ex.init.firstByteTimeoutMs)])
      stream = await this.#c.dialProtocol(peer, BLOCKS_PROTOCOL, { signal: dialSignal })
      const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE })
      let wake: (() => void) | undefined
      let writing = Promise.resolve()
      session.send = (wants) => {
        for (const w of wants) session.inflight.set(w.key, w)
        const bytes = encodeWant(wants.map((w) => w.cid))
        writing = writing.then(async () => { await lp.write(bytes, { signal: this.#abort.signal }) })
        writing.catch(() => {})
        wake?.()
      }
      this.#opening.set(k, (this.#opening.get(k) ?? 1) - 1)
      opened = true
      this.#sessions.set(k, [...(this.#sessions.get(k) ?? []), session])
      this.#dispatch()
      while (!this.#abort.signal.aborted) {
        if (session.inflight.size === 0) {
          // Nothing asked: wait for wants, or end the session when there is nothing left to do for it.
          if (!this.#queue.some((w) => !w.tried.has(k))) break
          const { promise, resolve } = Promise.withResolvers<void>()
          wake = resolve
          const timer = setTimeout(resolve, 50)
          await promise
          clearTimeout(timer)
          wake = undefined
          continue
        }
        const ms = this.#ex.init.firstByteTimeoutMs
        let frame: Uint8ArrayList
        try {
          frame = await lp.read({ signal: AbortSignal.any([this.#abort.signal, AbortSignal.timeout(ms)]) })
        } catch (err) {
          if ((err as Error).name === 'TimeoutError') throw new PeerTimeoutError(`peer ${k} sent nothing for ${ms} ms`, { cause: err })
          throw err
        }
        const msg = decodeMessage(frame.subarray())
        if (msg.type === 'want') throw new ProtocolViolationError('a server sent a want-list')
        const w = session.inflight.get(msg.cid.toString())
        if (w === undefined) throw new ProtocolViolationError(`peer ${k} answered a block it was not asked for`)
        session.inflight.delete(w.key)
        if (msg.type === 'dont-have') {
          this.#requeue(w, k)
          this.#schedule()
          continue
        }
        try {
          verifyBlock(w.cid, msg.bytes)
        } catch (err) {
          if (!(err instanceof BlockMismatchError)) throw err
          this.#ex.counters.blocksRejected++
          this.#ex.ban(peer, `sent wrong bytes for ${w.key}`)
          this.#requeue(w, k)
          throw err
        }
        // Copy: the frame may share memory with the stream's buffers.
        const bytes = Uint8Array.prototype.slice.call(msg.bytes)
        this.#ex.counters.bytesFromPeers += bytes.length
        this.#ex.counters.blocksFromPeers++
        this.stats.bytes += bytes.length
        this.stats.blocks++
        if (!this.#used.has(k)) {
          this.#used.add(k)
          this.stats.providersUsed = this.#used.size
        }
        this.#onBlock?.(bytes.length)
        this.#ex.landed(w.key, bytes)
        this.#pending.delete(w.key)
        for (const x of w.waiters) x.resolve(bytes)
        if (session.inflight.size < this.#ex.init.wantBatch) this.#schedule()
      }
      session.dead = true
      await writing
      await stream.close({ signal: AbortSignal.timeout(this.#ex.init.idleTimeoutMs) }).catch(() => {})
    } catch (err) {
      this.#log.debug({ err, peer: k, left: session.inflight.size }, 'block session failed; asking elsewhere')
      stream?.abort(err as Error)
      // A provider that cannot even open a stream is tried no more for what is queued.
      if (!opened) for (const w of this.#queue) w.tried.add(k)
    } finally {
      session.dead = true
      if (!opened) this.#opening.set(k, (this.#opening.get(k) ?? 1) - 1)
      // Only failures count against a block: a DONT_HAVE just sends it elsewhere.
      for (const w of session.inflight.values()) {
        w.attempts++
        this.#requeue(w, k)
      }
      session.inflight.clear()
      this.#sessions.set(k, (this.#sessions.get(k) ?? []).filter((x) => x !== session))
    }
  }
}
