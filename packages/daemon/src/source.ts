import type { PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { BlockSource } from '@strata/store'
import { BlockUnavailableError } from './errors.ts'
import type { ExchangeCounters, ExchangeInit, FetchStats } from './exchange.ts'
import { score } from './rendezvous.ts'
import { scavenges } from './scavenge.ts'
import { BlockSession, newWant } from './session.ts'
import type { Provider, SessionHost, Want } from './session.ts'

/** A block on its way to a fetch on this node, as a peer asking for it waits here. */
export interface Landing {
  bytes: Promise<Uint8Array>
  /** Whether the asking peer's wait may go on once its usual bound is up. */
  keepWaiting(): boolean
}

/** The first six bytes of a block's digest, as a number. */
function digestPrefix (cid: CID): number {
  const d = cid.multihash.digest
  return d[0]! * 2 ** 40 + d[1]! * 2 ** 32 + d[2]! * 2 ** 24 + d[3]! * 2 ** 16 + d[4]! * 2 ** 8 + d[5]!
}

/** What one fetch needs from the block exchange. */
export interface SourceComponents {
  init: Required<ExchangeInit>
  counters: ExchangeCounters
  isBanned(peer: PeerId | string): boolean
  ban(peer: PeerId | string, reason: string): void
  /** Keeps a verified block for peers fetching the same layer. */
  landed(key: string, bytes: Uint8Array): void
  /** A block kept by `landed`, while it is. */
  landedBlock(key: string): Uint8Array | undefined
  dialProtocol(peer: PeerId, protocols: string | string[], opts: { signal: AbortSignal }): Promise<Stream>
  /** The block protocols to offer, preferred first. */
  protocols: string[]
  /** Bytes a session's stream brought in, as they arrive. */
  onWireBytes(n: number): void
  logger: Logger
}

/** Searches for more providers one fetch may make once those it has cannot give a block. */
export const MAX_REFILLS = 3

/**
 * More providers of the layer, none of `known` (peer ids, those this fetch has
 * asked or holds as dropped); [] when the search finds none or `signal` fires.
 */
export type Refill = (known: ReadonlySet<string>, signal: AbortSignal) => Promise<PeerId[]>

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
 * owner, whose server waits for the block to land. So each block crosses
 * the producer's link about once however many peers fetch it. An owner asked for a
 * block its own restore has not reached yet fetches it then (from full providers
 * only, so that no two peers wait on each other), rather than answering DONT_HAVE
 * and leaving the asker to fetch it from the full providers as well; a DONT_HAVE
 * from the owner just sends the block to the full providers.
 *
 * The providers a fetch starts with are those the DHT gave first; after churn they
 * may all be dead while the DHT lists live holders further on. A block that no
 * provider is left to ask waits for a new search (`refill`, at most MAX_REFILLS per
 * fetch, each excluding every provider the fetch knows) and fails only when it
 * finds none.
 */
export class PeerBlockSource implements BlockSource {
  /** Every block is checked against its CID in its session, before it is handed out, written or counted. */
  readonly verified = true
  readonly stats: FetchStats = { providersUsed: 0, bytes: 0, blocks: 0 }
  readonly #c: SourceComponents
  readonly #providers = new Map<string, Provider>()
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
  readonly #host: SessionHost
  readonly #refill: Refill | undefined
  /** Searches made; whether one is running; whether the last found no one new. */
  #refills = 0
  #refilling = false
  #exhausted = false
  /**
   * The blocks this fetch has received, by the first bytes of their digest (a few
   * bytes a block, not its CID string): one that comes again is counted and logged.
   */
  readonly #received = new Set<number>()

  constructor (components: SourceComponents, providers: readonly PeerId[], opts: { onBlock?: (bytes: number) => void, self?: PeerId, onClose: () => void, refill?: Refill }) {
    this.#c = components
    this.#onBlock = opts.onBlock
    this.#self = opts.self?.toString() ?? ''
    this.#onClose = opts.onClose
    this.#refill = opts.refill
    this.#host = this.#sessionHost()
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

  /**
   * A block this fetch is waiting for, as `peer` waits for it here; undefined when it
   * is not waiting for it. A peer sharing the fetch may wait for as long as this node
   * asks the block of full providers: the owner's is the fetch of it that crosses the
   * providers' links. When this node itself waits for the block from another peer
   * sharing the fetch (views of who owns what differ while peers join), that peer
   * may be waiting on the asker in turn, so the wait is short.
   */
  landing (key: string, peer?: string): Landing | undefined {
    const w = this.#pending.get(key)
    if (w === undefined || w.done) return undefined
    if (w.landing === undefined) {
      w.landing = Promise.withResolvers<Uint8Array>()
      w.landing.promise.catch(() => {})
    }
    const sharer = peer !== undefined && this.#providers.get(peer)?.partial === true
    return { bytes: w.landing.promise, keepWaiting: () => sharer && !w.done && !this.#abort.signal.aborted && this.#direct(w) }
  }

  /**
   * Whether `w` is asked of full providers: this node is not waiting for another peer
   * sharing the fetch (its owner, or any sharer once no full provider is left), which
   * may be waiting on the asker in turn.
   */
  #direct (w: Want): boolean {
    const usable = [...this.#providers.values()].filter((p) => this.#usable(p))
    const owner = this.#owner(w, usable)
    return (owner === '' || w.tried.has(owner) || w.failed.has(owner)) && usable.some((p) => !p.partial && !w.tried.has(p.key))
  }

  /**
   * Fetches `cid` for `peer`, which shares this fetch and asked this node for it before
   * this node's restore did: the bytes when they land. Undefined when `peer` does not
   * share this fetch. It goes ahead of this node's own wants (a peer is waiting), to
   * full providers only; it never triggers a search for more providers.
   */
  fetchFor (cid: CID, peer: string): Landing | undefined {
    if (this.#abort.signal.aborted || this.#providers.get(peer)?.partial !== true) return undefined
    const key = cid.toString()
    const pending = this.landing(key, peer)
    if (pending !== undefined) return pending
    const w = this.#want(cid, key, 'a sharing peer asked for a block this fetch had received and no longer held')
    w.forPeer = peer
    // The asker waits for this node: asking it back would only wait on itself.
    w.tried.add(peer)
    this.#queue.unshift(w)
    this.#schedule()
    return this.landing(key, peer)
  }

  /** Peers this fetch still asks. */
  get providers (): PeerId[] {
    return [...this.#providers.values()].filter((p) => !p.dropped).map((p) => p.peer)
  }

  /** Searches for more providers this fetch made. */
  get refills (): number {
    return this.#refills
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
    let want = this.#pending.get(key)
    if (want === undefined) {
      // Landed here already: fetched for a sharing peer, or by another fetch on this node.
      const landed = this.#c.landedBlock(key)
      if (landed !== undefined) return landed
      want = this.#want(cid, key, 'the restore asked for a block this fetch had received and no longer held')
      this.#queue.push(want)
      this.#schedule()
    }
    const { promise, resolve, reject } = Promise.withResolvers<Uint8Array>()
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

  /** What this fetch's sessions report back to it. */
  #sessionHost (): SessionHost {
    const c = this.#c
    return {
      signal: this.#abort.signal,
      init: c.init,
      dialProtocol: c.dialProtocol,
      protocols: c.protocols,
      onWireBytes: c.onWireBytes,
      logger: c.logger,
      misbehaved: (p, reason) => { c.ban(p.peer, reason) },
      opened: (session) => {
        session.provider.sessions.push(session)
        this.#dispatch()
      },
      hasWorkFor: (p) => this.#queue.some((w) => !w.tried.has(p.key)),
      dontHave: (p, w) => {
        if (!w.done) {
          w.tried.add(p.key)
          this.#queue.push(w)
        }
        this.#schedule()
      },
      wrongBlock: (p, w) => {
        c.counters.blocksRejected++
        c.ban(p.peer, `sent wrong bytes for ${w.key}`)
        w.tried.add(p.key)
        this.#queue.push(w)
      },
      received: (p, w, bytes) => {
        if (w.forPeer !== undefined) c.counters.blocksForSharers++
        if (w.again !== undefined) this.#duplicate(p, w, w.again)
        this.#received.add(digestPrefix(w.cid))
        c.counters.bytesFromPeers += bytes.length
        scavenges.moved(bytes.length)
        c.counters.blocksFromPeers++
        this.stats.bytes += bytes.length
        this.stats.blocks++
        if (p.blocks === 1) this.stats.providersUsed++
        this.#onBlock?.(bytes.length)
        // Kept for peers only while some share this fetch: a fetch of its own would
        // hold them for nobody.
        if (this.#sharing > 0) c.landed(w.key, bytes)
        w.done = true
        this.#pending.delete(w.key)
        w.landing?.resolve(bytes)
        for (const x of w.waiters) x.resolve(bytes)
      },
      duplicate: (p, w) => { this.#duplicate(p, w, 'answered after the block had come from another provider') },
      requeue: (w) => { this.#queue.push(w) },
      schedule: () => { this.#schedule() }
    }
  }

  /** A new pending want of this fetch; `again` says why, should the block have come here before (it is then a duplicate). */
  #want (cid: CID, key: string, again: string): Want {
    const w = newWant(cid, key)
    if (this.#received.has(digestPrefix(cid))) w.again = again
    this.#pending.set(key, w)
    return w
  }

  /** Counts a block this fetch received before, and says why it came again. */
  #duplicate (p: Provider, w: Want, reason: string): void {
    this.#c.counters.blocksDuplicate++
    this.#c.logger.debug({ event: 'block-duplicate', cid: w.key, peer: p.key, reason }, 'block received twice')
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
    return this.#c.init.wantBatch * 2
  }

  #usable (p: Provider): boolean {
    return !p.dropped && !this.#c.isBanned(p.peer)
  }

  /**
   * The peer sharing this fetch that asks full providers for `w` ('' for this node).
   * An owner that has since been dropped or banned owns nothing: the block is owned
   * again among those left, else it would wait for that peer for ever.
   */
  #owner (w: Want, usable: Provider[]): string {
    if (w.forPeer !== undefined) return ''
    if (w.ownerVersion === this.#sharing && (w.owner === '' || this.#usable(this.#providers.get(w.owner)!))) return w.owner
    let best = ''
    let bestScore = score(w.key, this.#self)
    for (const p of usable) {
      if (!p.partial) continue
      const s = score(w.key, p.key)
      if (s > bestScore) {
        best = p.key
        bestScore = s
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
    const init = this.#c.init
    const usable = [...this.#providers.values()].filter((p) => this.#usable(p))
    // Wants that no provider is left to answer wait for a search for more; they fail once none is found.
    const orphan = (w: Want): boolean => !usable.some((p) => !w.tried.has(p.key))
    const mayRefill = this.#refill !== undefined && (this.#refilling || (!this.#exhausted && this.#refills < MAX_REFILLS))
    const own = (w: Want): boolean => w.waiters.length > 0
    if (mayRefill && !this.#refilling && this.#queue.some((w) => own(w) && w.attempts < init.maxAttempts && orphan(w))) this.#startRefill()
    const hopeless = (w: Want): boolean => w.attempts >= init.maxAttempts || (orphan(w) && !(mayRefill && own(w)))
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
      let best: BlockSession | undefined
      for (const p of usable) {
        if (p.dropped || !this.#queue.some((w) => this.#canAsk(w, p, usable))) continue
        const sessions = p.sessions.filter((x) => !x.dead)
        const idle = sessions.find((x) => x.inflight.size === 0)
        if (idle === undefined && sessions.length + p.opening < init.streamsPerProvider) {
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
      const room = Math.min(init.wantBatch, this.#window - best.inflight.size)
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

  /** Searches for providers this fetch does not know yet; the wants waiting for them are dispatched (or failed) after. */
  #startRefill (): void {
    this.#refilling = true
    this.#refills++
    const known = new Set(this.#providers.keys())
    if (this.#self !== '') known.add(this.#self)
    void this.#refill!(known, this.#abort.signal).catch(() => []).then((found) => {
      this.#refilling = false
      if (this.#abort.signal.aborted) return
      let added = 0
      for (const p of found) if (!this.#c.isBanned(p) && this.#add(p)) added++
      this.#exhausted = added === 0
      this.#c.logger.debug({ event: 'providers-refilled', added, refills: this.#refills }, added > 0 ? 'more providers found for a fetch whose providers gave out' : 'no more providers for a fetch whose providers gave out')
      this.#dispatch()
    })
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
    void new BlockSession(this.#host, p).run().finally(() => this.#dispatch())
  }
}
