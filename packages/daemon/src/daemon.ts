import { createHash } from 'node:crypto'
import { rmSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import type { Server } from 'node:http'
import type { PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { openStore } from '@strata/store'
import type { CommitOptions, GcReport, LayerInfo, LocalStore, ProgressEvent, Store } from '@strata/store'
import { checkEpoch, checkScope, DEFAULT_SCOPE, MAX_READ_SCOPES, RecordInvalidError } from '@strata/runner'
import type { RecordRejectReason, StepRecord } from '@strata/runner'
import { SOCKET_NAME, startControl } from './control.ts'
import { GcBudget } from './gc.ts'
import type { GcBudgetInit } from './gc.ts'
import { DaemonConfigError, NoProvidersError, RecordNotFoundError } from './errors.ts'
import { BlockExchange } from './exchange.ts'
import type { PeerBlockSource } from './exchange.ts'
import type { ExchangeCounters, ExchangeInit } from './exchange.ts'
import { DaemonMetrics } from './metrics.ts'
import { createScrubber } from './scrub.ts'
import type { Scrubber, ScrubInit } from './scrub.ts'
import { createNode, loadPrivateKey } from './node.ts'
import type { StrataNode } from './node.ts'
import {
  FETCHING_TOPIC, MAX_RECORD_SIZE, MAX_REQUEST_SIZE, RECORD_PREFIX, RECORDS_PROTOCOL, RECORDS_TOPIC, TrustPolicy, claimedKey, decodeRecordRequest,
  encodeRecordRequest, recordKey, verifyEnvelope
} from './records.ts'
import { peerIdOf, readPeerList, readPsk, writerOf } from './trust.ts'

/**
 * The index's LevelDB write buffer in a daemon's store: a restore writes its manifest
 * (~50 MB for the benchmark tree) into the index while blocks arrive, and LevelDB's
 * default 4 MiB turned that into ~24 level-0 tables and compactions rewriting them.
 */
export const INDEX_WRITE_BUFFER_BYTES = 16 * 1024 * 1024

export interface DaemonInit {
  /** Where the store, the identity key and the control socket live. */
  dataDir: string
  /** Multiaddrs to listen on. Default `/ip4/0.0.0.0/tcp/7401`. */
  listen?: string[]
  /** Multiaddrs (with `/p2p/<peer id>`) to join the fleet through. Default none. */
  bootstrap?: string[]
  /** Find peers on the LAN by mDNS. Default false. */
  mdns?: boolean
  /** Peers (besides the producer) that pull each new layer. Default 2. */
  replicas?: number
  /**
   * Whose records are accepted: peer ids (or ed25519 public keys, 64 hex digits),
   * each optionally `@GLOB` to trust it only in the scopes GLOB matches (`ID@pr/*`).
   * Default: anyone whose signature checks out. This node is always trusted.
   */
  trustedWriters?: string[]
  /** A file of trusted writers, one a line (`#` comments), added to `trustedWriters`. */
  trustedWritersFile?: string
  /** Records written in an earlier trust epoch are refused. Default 0. */
  epoch?: number
  /** Scopes a lookup uses when the caller names none, in order. Default `['default']`. */
  readScopes?: string[]
  /** Peer ids allowed to connect at all (connection gater, after the handshake); default: any. */
  allowPeers?: string[]
  /** A file of allowed peer ids, one a line (`#` comments), added to `allowPeers`. */
  allowPeersFile?: string
  /** A libp2p private network key (swarm.key format): only peers with the same key can connect. Default none. */
  pskFile?: string
  /** Refuse to start without `pskFile`. Default false. */
  requirePsk?: boolean
  /** How long a provider search (DHT) may take. Default 5 000 ms. */
  providerTimeoutMs?: number
  /** Once one provider of a layer is known, how much longer to wait for others. Default 300 ms. */
  providerGraceMs?: number
  /** Providers asked for one layer at most. Default 16. */
  maxProviders?: number
  exchange?: ExchangeInit
  logger?: Logger
  /** Control socket path, or false for none. Default `<dataDir>/strata.sock`. */
  socket?: string | false
  /** `host:port` for the Prometheus text endpoint (GET /metrics). Default: none. */
  metricsListen?: string
  /** Keep the store within a size budget (LRU, leases, fleet copies; see doc/STORE.md). Default: no budget. */
  gc?: GcBudgetInit
  /** Re-read the store's layers in the background, marking corrupt ones (scrub.ts). Default 20 MB/s; `bytesPerSecond: 0` turns it off. */
  scrub?: ScrubInit
  /** An already open store (the daemon then does not close it). Default: the store in `dataDir`, opened without waiting. */
  store?: Store & LocalStore
}

export interface LookupResult {
  record: StepRecord
  /** The signed envelope, as the producer signed it. */
  envelope: Uint8Array
  source: 'local' | 'gossip' | 'dht'
}

export interface FetchResult {
  layer: LayerInfo
  /** Providers that sent at least one block (0 when the layer was already here). */
  providers: number
  /** Bytes of blocks that came from peers. */
  bytes: number
  durationMs: number
}

export interface ResolveResult extends FetchResult {
  record: StepRecord
  envelope: Uint8Array
  recordSource: LookupResult['source']
}

export interface LayerStatus {
  root: string
  size: number
  entries: number
  /** Peers the DHT knows to hold it, this one included. */
  copies: number
}

export interface DaemonStatus {
  peerId: string
  addresses: string[]
  peers: string[]
  banned: string[]
  layers: LayerStatus[]
  counters: ExchangeCounters & { recordsLearned: number, recordsRejected: number, replicated: number }
  /** Records refused, by reason. */
  recordsRejected: Partial<Record<RecordRejectReason, number>>
  trustedWriters: string[] | null
  epoch: number
  readScopes: string[]
  privateNetwork: boolean
}

export interface FetchOptions {
  signal?: AbortSignal
  /** Peers believed to hold the layer, asked besides the DHT's providers. */
  hints?: readonly PeerId[]
  onProgress?: (event: ProgressEvent) => void
}

/** A strata node: the store, a libp2p host, the block exchange, records and replication. */
export class Daemon {
  readonly dataDir: string
  readonly store: Store & LocalStore
  readonly node: StrataNode
  readonly exchange: BlockExchange
  readonly trust: TrustPolicy
  readonly metrics: DaemonMetrics
  /** The store's size budget, when one was given. */
  readonly budget: GcBudget | undefined
  readonly scrub: Scrubber
  readonly #log: Logger
  readonly #ownsStore: boolean
  readonly #replicas: number
  readonly #providerTimeoutMs: number
  readonly #maxProviders: number
  readonly #providerGraceMs: number
  readonly #bootstrap: string[]
  readonly #tasks = new Set<Promise<unknown>>()
  readonly #stopping = new AbortController()
  readonly #replicating = new Set<string>()
  readonly counters = { recordsLearned: 0, recordsRejected: 0, replicated: 0 }
  /** Records refused, by reason (the metric's labels). */
  readonly rejected: Partial<Record<RecordRejectReason, number>> = {}
  readonly readScopes: string[]
  readonly privateNetwork: boolean
  #started = false
  readonly #socket: string | false
  readonly #metricsListen: string | undefined
  #control: Server | undefined
  #metricsServer: Server | undefined

  constructor (init: DaemonInit, store: Store & LocalStore, ownsStore: boolean, node: StrataNode, log: Logger) {
    this.dataDir = init.dataDir
    this.store = store
    this.node = node
    this.#log = log
    this.#ownsStore = ownsStore
    this.#replicas = init.replicas ?? 2
    this.#providerTimeoutMs = init.providerTimeoutMs ?? 5000
    this.#maxProviders = init.maxProviders ?? 16
    this.#providerGraceMs = init.providerGraceMs ?? 300
    this.#bootstrap = init.bootstrap ?? []
    this.#socket = init.socket ?? `${init.dataDir}/${SOCKET_NAME}`
    this.#metricsListen = init.metricsListen
    this.trust = new TrustPolicy(node.peerId.toString(), init.trustedWriters, init.epoch ?? 0)
    this.readScopes = init.readScopes ?? [DEFAULT_SCOPE]
    this.privateNetwork = init.pskFile !== undefined
    this.exchange = new BlockExchange({
      store,
      registrar: { handle: async (p, h, o) => { await node.handle(p, h, o) }, unhandle: async (p) => { await node.unhandle(p) } },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      logger: log
    }, init.exchange)
    this.scrub = createScrubber({ store, logger: log }, init.scrub)
    this.metrics = new DaemonMetrics(this)
    this.budget = init.gc !== undefined ? new GcBudget({ collect: async (o) => await this.gc(o), logger: log }, init.gc) : undefined
  }

  get peerId (): string {
    return this.node.peerId.toString()
  }

  get addresses (): string[] {
    return this.node.getMultiaddrs().map((a) => a.toString())
  }

  async start (): Promise<void> {
    if (this.#started) return
    await this.node.start()
    await this.exchange.start()
    await this.node.handle(RECORDS_PROTOCOL, (stream) => { void this.#serveRecord(stream) }, { maxInboundStreams: 8 })
    const pubsub = this.node.services.pubsub
    pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      if (msg.topic === FETCHING_TOPIC && msg.type === 'signed') this.#onFetching(msg.from, msg.data)
      if (msg.topic !== RECORDS_TOPIC) return
      void this.#onAnnouncement(msg.data).catch((err: unknown) => this.#log.warn({ err }, 'announcement not handled'))
    })
    pubsub.subscribe(RECORDS_TOPIC)
    pubsub.subscribe(FETCHING_TOPIC)
    this.#started = true
    try {
      if (this.#socket !== false) this.#control = await startControl(this, this.#socket, this.#log)
      if (this.#metricsListen !== undefined) this.#metricsServer = await this.#serveMetrics(this.#metricsListen)
    } catch (err) {
      await this.stop()
      throw err instanceof DaemonConfigError ? err : new DaemonConfigError(`cannot listen: ${(err as Error).message}`, { cause: err })
    }
    // Bootstrap discovery dials eventually; dialing now makes a fresh node useful at once.
    for (const addr of this.#bootstrap) {
      this.#background(this.node.dial(multiaddr(addr), { signal: AbortSignal.timeout(5000) }).then(() => {}))
    }
    this.budget?.start()
    this.budget?.check()
    this.scrub.start()
    this.#log.info({ peerId: this.peerId, addresses: this.addresses }, 'daemon started')
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#stopping.abort(new Error('daemon stopping'))
    await this.budget?.stop()
    await this.scrub.stop()
    for (const server of [this.#control, this.#metricsServer]) {
      if (server === undefined) continue
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
    if (this.#socket !== false) rmSync(this.#socket, { force: true })
    await Promise.allSettled([...this.#tasks])
    await this.exchange.stop()
    await this.node.stop()
    if (this.#ownsStore) await this.store.close()
  }

  /** The port the metrics endpoint listens on (useful with port 0). */
  get metricsPort (): number | undefined {
    const a = this.#metricsServer?.address()
    return typeof a === 'object' && a !== null ? a.port : undefined
  }

  async #serveMetrics (listen: string): Promise<Server> {
    const i = listen.lastIndexOf(':')
    const host = listen.slice(0, i)
    const port = Number(listen.slice(i + 1))
    if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new DaemonConfigError(`--metrics-listen wants HOST:PORT, got ${JSON.stringify(listen)}`)
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end()
        return
      }
      this.metrics.text().then((text) => res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(text), (err: unknown) => {
        this.#log.warn({ err }, 'metrics failed')
        res.writeHead(500).end()
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host.replace(/^\[|\]$/g, ''), () => resolve())
    })
    return server
  }

  #background (p: Promise<unknown>): void {
    const t = p.catch((err: unknown) => this.#log.debug({ err }, 'background task failed'))
    this.#tasks.add(t)
    void t.finally(() => this.#tasks.delete(t))
  }

  #signal (signal?: AbortSignal, ms?: number): AbortSignal {
    const list = [this.#stopping.signal]
    if (signal !== undefined) list.push(signal)
    if (ms !== undefined) list.push(AbortSignal.timeout(ms))
    return AbortSignal.any(list)
  }

  // ---- records ----

  /** Counts and logs a refused record: every refusal is a miss with its reason. */
  #rejected (err: RecordInvalidError, context: Record<string, unknown>, msg: string): void {
    this.counters.recordsRejected++
    this.rejected[err.reason] = (this.rejected[err.reason] ?? 0) + 1
    this.#log.warn({ err, reason: err.reason, ...context }, msg)
  }

  /**
   * Looks a key up in `scopes` (default the daemon's read scopes), most preferred
   * first. The local store (records learned by gossip are stored there too) is
   * read first; unless it holds a record in the first scope, the DHT providers of
   * the key are asked for the scopes before the best local one. A record in the
   * first scope ends the search; once any usable record is known (here or from a
   * provider) the search ends `providerGraceMs` later; the best record found wins.
   */
  async lookup (key: CID, opts: { signal?: AbortSignal, scopes?: readonly string[] } = {}): Promise<LookupResult> {
    const scopes = opts.scopes ?? this.readScopes
    let rejected: string | undefined
    let best: (LookupResult & { rank: number }) | undefined
    for (const [rank, scope] of scopes.entries()) {
      const local = await this.store.getRecord(recordKey(key, scope))
      if (local === undefined) continue
      try {
        const record = verifyEnvelope(local, this.trust.reading([scope]), key)
        best = { record, envelope: local, source: this.#gossiped.has(key.toString()) ? 'gossip' : 'local', rank }
        break
      } catch (err) {
        if (!(err instanceof RecordInvalidError)) throw err
        rejected = err.message
        this.#rejected(err, { key: key.toString(), scope }, 'ignoring a stored record')
      }
    }
    const result = (b: LookupResult & { rank: number }): LookupResult => ({ record: b.record, envelope: b.envelope, source: b.source })
    if (best?.rank === 0) return result(best)
    const wanted = scopes.slice(0, best?.rank ?? scopes.length)
    const enough = new AbortController()
    let grace: NodeJS.Timeout | undefined
    const signal = AbortSignal.any([this.#signal(opts.signal, this.#providerTimeoutMs), enough.signal])
    const startGrace = (): void => { grace ??= setTimeout(() => enough.abort(new Error('a usable record is known')), this.#providerGraceMs) }
    // With a record here already, a better scope elsewhere is worth a short wait only.
    if (best !== undefined) startGrace()
    let asked = 0
    try {
      for await (const provider of this.#providers(key, signal)) {
        if (asked++ >= this.#maxProviders) break
        let answers: Uint8Array[]
        try {
          answers = await this.#askRecord(provider, key, wanted, signal)
        } catch (err) {
          this.#log.debug({ err, peer: provider.toString() }, 'record request failed')
          continue
        }
        for (const [rank, bytes] of answers.entries()) {
          const scope = wanted[rank]!
          if (bytes.length === 0 || (best !== undefined && best.rank <= rank)) continue
          try {
            const record = verifyEnvelope(bytes, this.trust.reading([scope]), key)
            await this.store.putRecord(recordKey(key, scope), bytes)
            best = { record, envelope: bytes, source: 'dht', rank }
          } catch (err) {
            if (!(err instanceof RecordInvalidError)) throw err
            rejected = err.message
            this.#rejected(err, { key: key.toString(), scope, peer: provider.toString() }, 'ignoring a record from a peer')
          }
        }
        if (best?.rank === 0) break
        if (best !== undefined) startGrace()
      }
    } catch (err) {
      if (opts.signal?.aborted === true) throw err
      this.#log.debug({ err, key: key.toString() }, 'provider search ended')
    } finally {
      clearTimeout(grace)
    }
    if (best !== undefined) return result(best)
    throw new RecordNotFoundError(key.toString(), rejected ?? (asked === 0 ? 'no peer provides it' : `none of ${asked} providers had a usable one`))
  }

  readonly #gossiped = new Set<string>()

  async #onAnnouncement (data: Uint8Array): Promise<void> {
    if (data.length > MAX_RECORD_SIZE) return
    let record: StepRecord
    try {
      // Any scope: the scope is checked when a lookup reads the record.
      record = verifyEnvelope(data, this.trust)
    } catch (err) {
      if (!(err instanceof RecordInvalidError)) throw err
      this.#rejected(err, {}, 'ignoring an announced record')
      return
    }
    const k = record.key.toString()
    const slot = recordKey(k, record.scope)
    const held = await this.store.getRecord(slot)
    if (held === undefined || !this.#verifies(held, record.key, record.scope)) await this.store.putRecord(slot, data)
    this.#gossiped.add(k)
    // Only a hint for lookup's `source`: keep the newest keys, not all of them.
    if (this.#gossiped.size > 100_000) this.#gossiped.delete(this.#gossiped.values().next().value!)
    this.counters.recordsLearned++
    this.#log.debug({ key: k, layer: record.layer.toString(), producer: record.producer }, 'record learned by gossip')
    this.#maybeReplicate(record)
  }

  #verifies (bytes: Uint8Array, key: CID, scope: string): boolean {
    try {
      verifyEnvelope(bytes, this.trust.reading([scope]), key)
      return true
    } catch {
      return false
    }
  }

  /** Signs nothing: announces a record the runner already signed and stored, and provides its key and layer. */
  async publish (key: CID, opts: { signal?: AbortSignal, scope?: string } = {}): Promise<StepRecord> {
    const scope = opts.scope ?? DEFAULT_SCOPE
    const bytes = await this.store.getRecord(recordKey(key, scope))
    if (bytes === undefined) throw new RecordNotFoundError(key.toString(), `not in the local store in scope ${scope}`)
    const record = verifyEnvelope(bytes, this.trust.reading([scope]), key)
    await this.node.services.pubsub.publish(RECORDS_TOPIC, bytes).catch((err: unknown) => this.#log.debug({ err }, 'gossip publish failed'))
    this.#background(this.#provide(key, opts.signal))
    if (await this.store.has(record.layer)) this.#background(this.#provide(record.layer, opts.signal))
    return record
  }

  async #provide (cid: CID, signal?: AbortSignal): Promise<void> {
    await this.node.contentRouting.provide(cid, { signal: this.#signal(signal, 30_000) })
  }

  async * #providers (cid: CID, signal: AbortSignal): AsyncGenerator<PeerId> {
    const self = this.peerId
    const seen = new Set<string>()
    for await (const p of this.node.contentRouting.findProviders(cid, { signal })) {
      const k = p.id.toString()
      if (k === self || seen.has(k)) continue
      seen.add(k)
      if (p.multiaddrs.length > 0) await this.node.peerStore.merge(p.id, { multiaddrs: p.multiaddrs }).catch(() => {})
      yield p.id
    }
  }

  /** The peer's envelopes for `key` in each of `scopes` (empty where it has none). */
  async #askRecord (peer: PeerId, key: CID, scopes: readonly string[], signal: AbortSignal): Promise<Uint8Array[]> {
    const stream = await this.node.dialProtocol(peer, RECORDS_PROTOCOL, { signal })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_RECORD_SIZE })
      await lp.write(encodeRecordRequest({ key, scopes: [...scopes] }), { signal })
      const answers: Uint8Array[] = []
      for (let i = 0; i < scopes.length; i++) answers.push((await lp.read({ signal })).subarray())
      await stream.close({ signal }).catch(() => {})
      return answers
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }

  async #serveRecord (stream: Stream): Promise<void> {
    try {
      const signal = AbortSignal.timeout(10_000)
      // One request of at most 4 KiB: buffering more of what a peer sends is a flood.
      const lp = lpStream(stream, { maxDataLength: MAX_REQUEST_SIZE, maxBufferSize: 16 * MAX_REQUEST_SIZE })
      const req = decodeRecordRequest((await lp.read({ signal })).subarray())
      for (const scope of req.scopes) {
        const bytes = await this.store.getRecord(recordKey(req.key, scope))
        await lp.write(bytes ?? new Uint8Array(0), { signal })
      }
      await stream.close({ signal })
    } catch (err) {
      this.#log.debug({ err }, 'record stream aborted')
      stream.abort(err as Error)
    }
  }

  // ---- layers ----

  readonly #inflight = new Map<string, Promise<FetchResult>>()

  /** Restores a layer from the fleet: every provider is asked, local blocks are taken locally. One fetch per layer at a time. */
  async fetchLayer (root: CID, opts: FetchOptions = {}): Promise<FetchResult> {
    const key = root.toString()
    const running = this.#inflight.get(key)
    if (running !== undefined) return await running
    const p = this.#fetchLayer(root, opts)
    this.#inflight.set(key, p)
    try {
      return await p
    } finally {
      this.#inflight.delete(key)
    }
  }

  async #fetchLayer (root: CID, opts: FetchOptions): Promise<FetchResult> {
    const t0 = performance.now()
    const have = await this.store.getLayer(root)
    if (have !== undefined) return { layer: have, providers: 0, bytes: 0, durationMs: performance.now() - t0 }
    const providers: PeerId[] = []
    const seen = new Set<string>([this.peerId])
    for (const h of opts.hints ?? []) {
      if (seen.has(h.toString()) || this.exchange.isBanned(h)) continue
      seen.add(h.toString())
      providers.push(h)
    }
    // A DHT query runs until its own timeout; once someone is known to hold the
    // layer, the others that answer within a short grace are enough.
    const enough = new AbortController()
    let grace: NodeJS.Timeout | undefined
    const startGrace = (): void => { grace ??= setTimeout(() => enough.abort(new Error('enough providers')), this.#providerGraceMs) }
    if (providers.length > 0) startGrace()
    try {
      for await (const p of this.#providers(root, AbortSignal.any([this.#signal(opts.signal, this.#providerTimeoutMs), enough.signal]))) {
        if (seen.has(p.toString()) || this.exchange.isBanned(p)) continue
        seen.add(p.toString())
        providers.push(p)
        startGrace()
        if (providers.length >= this.#maxProviders) break
      }
    } catch (err) {
      if (opts.signal?.aborted === true) throw err
      this.#log.debug({ err, layer: root.toString() }, 'provider search ended')
    } finally {
      clearTimeout(grace)
    }
    if (providers.length === 0) throw new NoProvidersError(root.toString())
    const source = this.exchange.source(providers, { self: this.node.peerId })
    const key = root.toString()
    this.#fetching.set(key, source)
    // Peers fetching the same layer split it and serve each other what has landed:
    // those that announced it lately, and those that will (they hear us announce).
    for (const peer of this.#fetchers.get(key)?.values() ?? []) if (!this.exchange.isBanned(peer)) source.addProvider(peer)
    this.#announceFetch(root)
    // Later fetchers find this node on the DHT while the layer is still coming.
    this.#background(this.#provide(root))
    const end = this.metrics.fetchDuration.startTimer()
    let fetched = false
    try {
      const layer = await this.store.restore(root, source, { untrusted: true, signal: this.#signal(opts.signal), onProgress: opts.onProgress })
      fetched = true
      end()
      this.budget?.check()
      this.#background(this.#provide(root))
      this.#log.info({ layer: root.toString(), providers: source.stats.providersUsed, bytes: source.stats.bytes }, 'layer fetched from peers')
      return { layer, providers: source.stats.providersUsed, bytes: source.stats.bytes, durationMs: performance.now() - t0 }
    } finally {
      this.#fetching.delete(key)
      source.close()
      this.#log.debug({ layer: key, providers: source.providerStats }, 'fetch ended')
      if (!fetched) this.#background(this.node.contentRouting.cancelReprovide(root, { signal: this.#signal(undefined, 5000) }))
    }
  }

  readonly #fetching = new Map<string, PeerBlockSource>()
  /** Peers that announced a fetch lately, per layer (bounded: the newest layers, the newest peers). */
  readonly #fetchers = new Map<string, Map<string, PeerId>>()
  readonly #announced = new Map<string, number>()

  #announceFetch (root: CID): void {
    const key = root.toString()
    const last = this.#announced.get(key) ?? 0
    if (Date.now() - last < 1000) return
    this.#announced.set(key, Date.now())
    if (this.#announced.size > 1000) this.#announced.delete(this.#announced.keys().next().value!)
    this.node.services.pubsub.publish(FETCHING_TOPIC, root.bytes).catch((err: unknown) => this.#log.debug({ err }, 'fetch announcement not sent'))
  }

  #onFetching (from: PeerId, data: Uint8Array): void {
    if (data.length > 128) return
    let root: CID
    try {
      root = CID.decode(data)
    } catch {
      return
    }
    const key = root.toString()
    let peers = this.#fetchers.get(key)
    if (peers === undefined) {
      peers = new Map()
      this.#fetchers.set(key, peers)
      if (this.#fetchers.size > 64) this.#fetchers.delete(this.#fetchers.keys().next().value!)
    }
    peers.delete(from.toString())
    peers.set(from.toString(), from)
    if (peers.size > 64) peers.delete(peers.keys().next().value!)
    const source = this.#fetching.get(key)
    if (source === undefined || this.exchange.isBanned(from)) return
    source.addProvider(from)
    // The newcomer learns about us in turn.
    this.#announceFetch(root)
  }

  /** Lookup, then fetch: what the runner asks for on a local miss. */
  async resolve (key: CID, opts: FetchOptions & { scopes?: readonly string[] } = {}): Promise<ResolveResult> {
    const t0 = performance.now()
    const found = await this.lookup(key, { signal: opts.signal, scopes: opts.scopes })
    const hints = [...(opts.hints ?? [])]
    const producer = parsePeerId(found.record.producer)
    if (producer !== undefined) hints.push(producer)
    const fetched = await this.fetchLayer(found.record.layer, { ...opts, hints })
    return { ...fetched, record: found.record, envelope: found.envelope, recordSource: found.source, durationMs: performance.now() - t0 }
  }

  /** Pull a newly announced layer when this node is among the `replicas` peers it hashes to. */
  #maybeReplicate (record: StepRecord): void {
    if (this.#replicas <= 0) return
    const root = record.layer.toString()
    if (this.#replicating.has(root)) return
    const candidates = new Set(this.node.services.pubsub.getSubscribers(RECORDS_TOPIC).map((p) => p.toString()))
    candidates.add(this.peerId)
    candidates.delete(record.producer)
    const rank = (p: string): string => createHash('sha256').update(`${root}\0${p}`).digest('hex')
    const chosen = [...candidates].sort((a, b) => (rank(a) < rank(b) ? -1 : 1)).slice(0, this.#replicas)
    if (!chosen.includes(this.peerId)) return
    this.#replicating.add(root)
    const hint = parsePeerId(record.producer)
    this.#background((async () => {
      try {
        if (await this.store.has(record.layer)) return
        await this.fetchLayer(record.layer, { hints: hint !== undefined ? [hint] : [] })
        this.counters.replicated++
        this.#log.info({ layer: root }, 'replicated')
      } finally {
        this.#replicating.delete(root)
      }
    })())
  }

  // ---- the store, for the runner over the control socket ----

  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    const end = this.metrics.captureDuration.startTimer()
    const layer = await this.store.commit(dir, opts)
    end()
    this.budget?.check()
    this.#background(this.#provide(layer.root))
    return layer
  }

  /** Removes a layer from the store and stops providing it (other peers' DHT entries expire on their own). */
  async removeLayer (root: CID, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.store.removeLayer(root)
    await this.node.contentRouting.cancelReprovide(root, { signal: this.#signal(opts.signal, 5000) }).catch((err: unknown) => this.#log.debug({ err }, 'cancelReprovide failed'))
  }

  /** Stores a record; the runner's signed records are announced and provided at once. */
  async putRecord (key: string, value: Uint8Array): Promise<void> {
    if (!key.startsWith(RECORD_PREFIX)) {
      await this.store.putRecord(key, value)
      return
    }
    const claimed = claimedKey(value)
    if (recordKey(claimed.key, claimed.scope) !== key) throw new RecordInvalidError(key, 'wrong-key', `is about ${recordKey(claimed.key, claimed.scope)}`)
    await this.store.putRecord(key, value)
    await this.publish(claimed.key, { scope: claimed.scope })
  }

  /** Peers the DHT knows to hold `root`, this node included when it does. */
  async copies (root: CID, opts: { signal?: AbortSignal } = {}): Promise<number> {
    let n = (await this.store.has(root)) ? 1 : 0
    try {
      for await (const _ of this.#providers(root, this.#signal(opts.signal, Math.min(this.#providerTimeoutMs, 2000)))) n++
    } catch {
      // The search timed out: the count so far is what the fleet is known to hold.
    }
    return n
  }

  /** One collection of the store; a layer's copies are what the DHT knows (1: this is the last one). */
  async gc (opts: { maxSize: number, hardLimit?: number | undefined, dryRun?: boolean, signal?: AbortSignal }): Promise<GcReport> {
    return await this.store.gc({
      maxSize: opts.maxSize,
      ...(opts.hardLimit !== undefined ? { hardLimit: opts.hardLimit } : {}),
      dryRun: opts.dryRun === true,
      signal: this.#signal(opts.signal),
      copies: async (root, o) => await this.copies(root, o)
    })
  }

  async status (opts: { signal?: AbortSignal, copies?: boolean } = {}): Promise<DaemonStatus> {
    const layers: LayerStatus[] = []
    const list = await this.store.listLayers()
    const counts = opts.copies === false ? list.map(() => -1) : await Promise.all(list.slice(0, 64).map(async (l) => await this.copies(l.root, opts)))
    for (const [i, l] of list.entries()) layers.push({ root: l.root.toString(), size: l.size, entries: l.entries, copies: counts[i] ?? -1 })
    return {
      peerId: this.peerId,
      addresses: this.addresses,
      peers: this.node.getPeers().map((p) => p.toString()),
      banned: this.exchange.banned,
      layers,
      counters: { ...this.exchange.counters, ...this.counters },
      recordsRejected: { ...this.rejected },
      trustedWriters: this.trust.writers !== undefined ? [...this.trust.writers] : null,
      epoch: this.trust.epoch,
      readScopes: this.readScopes,
      privateNetwork: this.privateNetwork
    }
  }
}

function parsePeerId (s: string): PeerId | undefined {
  try {
    return peerIdFromString(s)
  } catch {
    return undefined
  }
}

/** Opens the store and builds the node; call start(). */
export async function createDaemon (init: DaemonInit): Promise<Daemon> {
  if (typeof init.dataDir !== 'string' || init.dataDir === '') throw new TypeError('dataDir is required')
  if (init.replicas !== undefined && (!Number.isInteger(init.replicas) || init.replicas < 0)) throw new DaemonConfigError(`replicas must be a whole number >= 0, got ${init.replicas}`)
  const peers = (list: readonly string[] | undefined, normalize: (s: string) => string): string[] | undefined => list?.map((p) => {
    try {
      return normalize(p)
    } catch (err) {
      throw new DaemonConfigError(`${JSON.stringify(p)} is not a peer id or an ed25519 public key${normalize === writerOf ? ', optionally with @SCOPE-PATTERN' : ''}`, { cause: err })
    }
  })
  let trustedWriters = peers(init.trustedWriters, writerOf)
  let allowPeers = peers(init.allowPeers, peerIdOf)
  try {
    if (init.epoch !== undefined) checkEpoch(init.epoch)
    if (init.readScopes !== undefined) {
      init.readScopes.forEach(checkScope)
      if (init.readScopes.length === 0 || init.readScopes.length > MAX_READ_SCOPES) throw new TypeError(`read scopes must be 1 to ${MAX_READ_SCOPES}, got ${init.readScopes.length}`)
    }
  } catch (err) {
    throw new DaemonConfigError((err as Error).message, { cause: err })
  }
  if (init.requirePsk === true && init.pskFile === undefined) throw new DaemonConfigError('a pre-shared key is required (--require-psk) but none was given (--psk-file FILE)')
  const psk = init.pskFile !== undefined ? await readPsk(init.pskFile) : undefined
  if (init.allowPeersFile !== undefined) allowPeers = [...(allowPeers ?? []), ...await readPeerList(init.allowPeersFile)]
  if (init.trustedWritersFile !== undefined) trustedWriters = [...(trustedWriters ?? []), ...await readPeerList(init.trustedWritersFile, writerOf)]
  const log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'daemon' })
  if (psk !== undefined && (statSync(init.pskFile!).mode & 0o077) !== 0) log.warn({ file: init.pskFile }, 'the pre-shared key file is readable by other users: chmod 600 it')
  const privateKey = await loadPrivateKey(init.dataDir)
  const store = init.store ?? await openStore({ dataDir: init.dataDir, logger: init.logger, wait: false, indexWriteBufferBytes: INDEX_WRITE_BUFFER_BYTES })
  try {
    const node = await createNode({
      privateKey,
      listen: init.listen ?? ['/ip4/0.0.0.0/tcp/7401'],
      bootstrap: init.bootstrap ?? [],
      mdns: init.mdns ?? false,
      ...(allowPeers !== undefined ? { allowPeers } : {}),
      ...(psk !== undefined ? { psk } : {})
    })
    return new Daemon({ ...init, ...(trustedWriters !== undefined ? { trustedWriters } : {}) }, store, init.store === undefined, node, log)
  } catch (err) {
    if (init.store === undefined) await store.close()
    throw new DaemonConfigError(`cannot create the libp2p node: ${(err as Error).message}`, { cause: err })
  }
}
