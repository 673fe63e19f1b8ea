import { join } from 'node:path'
import { rmSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Server } from 'node:http'
import type { PeerId } from '@libp2p/interface'
import type { SingleKadDHT } from '@libp2p/kad-dht'
import type { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { cidString } from '@strata/chunker'
import { openStore } from '@strata/store'
import type { CommitOptions, GcReport, LayerInfo, LocalStore, Store } from '@strata/store'
import { RECORD_PREFIX, TrustPolicy, loadIdentity, recordKey, verifyEnvelope } from '@strata/records'
import type { Identity, RecordRejectReason, StepRecord } from '@strata/records'
import type { ClaimCounters } from './claim-table.ts'
import { CLAIMS_TOPIC, ClaimService } from './claims.ts'
import { INDEX_FLUSH_EVERY_MS, INDEX_WRITE_BUFFER_BYTES, readConfig } from './config.ts'
import type { DaemonConfig, DaemonInit } from './config.ts'
import { startControl } from './control.ts'
import type { ControlComponents } from './control.ts'
import { Discovery } from './discovery.ts'
import { DaemonConfigError } from './errors.ts'
import { BlockExchange } from './exchange.ts'
import { GcBudget } from './gc.ts'
import { HasLayer } from './has-layer.ts'
import { LayerFetch } from './layer-fetch.ts'
import type { FetchOptions, FetchResult } from './layer-fetch.ts'
import { HitLog, processStats } from './fleet-view.ts'
import { DaemonMetrics, serveMetrics } from './metrics.ts'
import { createNode, dhtStoreOf, loadPrivateKey } from './node.ts'
import { createScrubber } from './scrub.ts'
import type { Scrubber } from './scrub.ts'
import type { StrataNode } from './node.ts'
import type { DaemonStatus, LayerStatus } from './protocol.ts'
import { ProviderSearch } from './providers.ts'
import { OffHeapPacer } from './scavenge.ts'
import { MallocTrimmer } from './malloc-trim.ts'
import { enabledByEnv as checkHugePagesEnv, HugePageGate } from './huge-pages.ts'
import type { ProviderSearchOptions, ProvidersComponents } from './providers.ts'
import { Recent } from './recent.ts'
import { RecordService } from './record-service.ts'
import { RecordSync, slotOf } from './record-sync.ts'
import type { LookupResult } from './record-service.ts'
import { FETCHING_TOPIC, RECORDS_TOPIC } from './records.ts'
import { Replication, parsePeerId } from './replication.ts'

export type { DaemonInit } from './config.ts'
export type { DaemonStatus, LayerStatus } from './protocol.ts'
export type { LookupResult } from './record-service.ts'
export type { FetchOptions, FetchResult } from './layer-fetch.ts'

export interface ResolveResult extends FetchResult {
  record: StepRecord
  envelope: Uint8Array
  recordSource: LookupResult['source']
}

/** A strata node: the store, a libp2p host, the block exchange, records and replication. */
/** How long the runner must have been quiet before the daemon provides new CIDs on the DHT, and the longest it waits for that. */
const ANNOUNCE_QUIET_MS = 500
const ANNOUNCE_MAX_DELAY_MS = 30_000

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
  readonly counters = { recordsLearned: 0, recordsRejected: 0, replicated: 0 }
  /** Claims granted to this node's runners, held by others, peers' claims that expired, claims refused. */
  readonly claimCounters: ClaimCounters = { granted: 0, held: 0, expired: 0, rejected: 0 }
  /** Claims refused, by reason. */
  readonly claimsRejected: Partial<Record<RecordRejectReason, number>> = {}
  /** One build per key across the fleet (see ClaimService). */
  readonly claims: ClaimService
  /** Records refused, by reason (the metric's labels). */
  readonly rejected: Partial<Record<RecordRejectReason, number>> = {}
  readonly readScopes: string[]
  readonly privateNetwork: boolean
  /** Hits and misses the runner reported, for the fleet view. */
  readonly hits = new HitLog()
  readonly #sync: RecordSync
  readonly #hasLayer: HasLayer
  readonly #config: DaemonConfig
  readonly #log: Logger
  readonly #ownsStore: boolean
  readonly #records: RecordService
  readonly #layers: LayerFetch
  readonly #replication: Replication
  readonly #search: ProvidersComponents
  readonly #discovery: Discovery
  /** CIDs provided lately: each is provided once, then kept alive by the DHT's reprovider. */
  readonly #announced = new Recent<true>({ keepMs: 10 * 60_000, maxEntries: 8192 })
  /** When the runner last asked for something (a lookup, a commit, a record): provides wait for a quiet moment. */
  #busyAt = 0
  #announcing: Promise<void> = Promise.resolve()
  readonly #tasks = new Set<Promise<unknown>>()
  readonly #stopping = new AbortController()
  /** Collects the garbage buffers that V8's own triggers leave to pile up outside its heap. */
  readonly #offHeap = new OffHeapPacer()
  /** Gives malloc's free pages back, so that a burst's peak does not stay in the RSS. */
  readonly #trimmer = new MallocTrimmer()
  /** Huge pages while a restore or a commit runs, small pages at rest, so that khugepaged does not undo the trims. */
  readonly #hugePages = new HugePageGate()
  #started = false
  #control: Server | undefined
  #metricsServer: Server | undefined

  constructor (config: DaemonConfig, store: Store & LocalStore, ownsStore: boolean, node: StrataNode, log: Logger, identity: Identity) {
    this.#config = config
    this.dataDir = config.dataDir
    this.store = store
    this.node = node
    this.#log = log
    this.#ownsStore = ownsStore
    this.trust = new TrustPolicy(node.peerId.toString(), config.trustedWriters, config.epoch)
    this.readScopes = config.readScopes
    this.privateNetwork = config.psk !== undefined
    this.#discovery = new Discovery({
      peerId: node.peerId,
      dial: async (addr, o) => await node.dial(addr, o),
      connected: (peer) => node.getPeers().some((p) => p.toString() === peer),
      ownAddresses: () => node.getMultiaddrs(),
      peerCount: () => node.getPeers().length,
      logger: log
    }, { bootstrap: config.bootstrap, intervalMs: config.bootstrapIntervalMs, ...(config.dnsServer !== undefined ? { dnsServer: config.dnsServer } : {}) })
    this.#search = { peerId: node.peerId, contentRouting: node.contentRouting, peerStore: node.peerStore, logger: log }
    this.exchange = new BlockExchange({
      store,
      registrar: { handle: async (p, h, o) => { await node.handle(p, h, o) }, unhandle: async (p) => { await node.unhandle(p) } },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      logger: log
    }, config.exchange)
    this.scrub = createScrubber({ store, logger: log }, config.scrub)
    this.metrics = new DaemonMetrics({
      exchange: this.exchange.counters,
      rejected: this.rejected,
      replicated: () => this.counters.replicated,
      peers: () => node.getPeers().length,
      scrub: this.scrub.counters,
      claims: this.claimCounters,
      claimsRejected: this.claimsRejected,
      liveClaims: () => this.claims.table.size
    })
    this.budget = config.gc !== undefined ? new GcBudget({ collect: async (o) => await this.gc(o), logger: log }, config.gc) : undefined
    const publish = async (topic: string, data: Uint8Array): Promise<unknown> => await node.services.pubsub.publish(topic, data)
    const providers = (cid: CID, o: Omit<ProviderSearchOptions, 'timeoutMs' | 'stop'>): ProviderSearch => this.#providers(cid, o)
    this.#layers = new LayerFetch({
      peerId: node.peerId,
      store,
      exchange: this.exchange,
      publish,
      providers,
      provide: (cid) => { this.#background(this.#provide(cid)) },
      unprovide: (cid) => { this.#background(node.contentRouting.cancelReprovide(cid, { signal: this.#signal(undefined, 5000) })) },
      signal: (s) => this.#signal(s),
      timeFetch: () => this.metrics.fetchDuration.startTimer(),
      fetched: () => { this.budget?.check() },
      logger: log
    }, { maxProviders: config.maxProviders })
    this.#replication = new Replication({
      peerId: node.peerId,
      subscribers: (topic) => node.services.pubsub.getSubscribers(topic),
      store,
      fetch: async (root, o) => await this.fetchLayer(root, o),
      background: (task) => { this.#background(task) },
      logger: log
    }, { replicas: config.replicas, counters: this.counters })
    this.#records = new RecordService({
      store,
      handle: async (protocol, handler, o) => { await node.handle(protocol, handler, o) },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      publish,
      providers,
      provide: (cid, signal) => { this.#announce(cid, signal) },
      learned: (record) => { this.#replication.announced(record) },
      recorded: (record) => { this.claims.recorded(record.key, record.scope) },
      connectedPeers: () => node.getPeers(),
      routablePeers: () => (node.services.dht as SingleKadDHT).routingTable.size,
      logger: log
    }, { self: node.peerId.toString(), trust: this.trust, readScopes: this.readScopes, maxProviders: config.maxProviders, counters: this.counters, rejected: this.rejected })
    this.claims = new ClaimService({
      identity,
      publish,
      handle: async (protocol, handler, o) => { await node.handle(protocol, handler, o) },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      connectedPeers: () => node.getPeers(),
      hasRecord: async (key, scopes) => await this.#hasRecord(key, scopes),
      logger: log.child({ component: 'claims' })
    }, { trust: this.trust, readScopes: this.readScopes, counters: this.claimCounters, rejected: this.claimsRejected, ...(config.claimSettleMs !== undefined ? { settleMs: config.claimSettleMs } : {}) })
    this.#sync = new RecordSync({
      handle: async (protocol, handler, o) => { await node.handle(protocol, handler, o) },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      holds: async (slot) => (await store.getRecord(slot)) !== undefined,
      learn: async (envelope) => { await this.#records.announced(envelope); await this.#remember(envelope) },
      stopping: this.#stopping.signal,
      logger: log
    }, { records: config.recentRecords })
    this.#hasLayer = new HasLayer({
      handle: async (protocol, handler, o) => { await node.handle(protocol, handler, o) },
      dialProtocol: async (peer, protocol, o) => await node.dialProtocol(peer, protocol, o),
      holds: async (root) => (await store.getLayer(root)) !== undefined,
      logger: log
    })
  }

  /** Whether the store holds a trusted record for `key` in one of `scopes`. */
  async #hasRecord (key: CID, scopes: readonly string[]): Promise<boolean> {
    for (const scope of scopes) {
      const bytes = await this.store.getRecord(recordKey(key, scope))
      if (bytes === undefined) continue
      try {
        verifyEnvelope(bytes, this.trust.reading([scope]), key)
        return true
      } catch {
        // Refused: as if absent (lookups log why).
      }
    }
    return false
  }

  /** Keeps a record this node stored (verified: only then is it in the store) for peers that connect later. */
  async #remember (envelope: Uint8Array): Promise<void> {
    const slot = slotOf(envelope)
    if (slot === undefined) return
    const held = await this.store.getRecord(slot)
    if (held !== undefined) this.#sync.remember(held)
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
    await this.#records.start()
    await this.#sync.start()
    await this.claims.start()
    await this.#hasLayer.start()
    this.node.addEventListener('peer:connect', (evt) => { this.#sync.connected(evt.detail) })
    const pubsub = this.node.services.pubsub
    pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      if (msg.topic === FETCHING_TOPIC && msg.type === 'signed') this.#layers.announced(msg.from, msg.data)
      if (msg.topic === CLAIMS_TOPIC) {
        try {
          this.claims.announced(msg.data, msg.type === 'signed' ? msg.from.toString() : undefined)
        } catch (err) {
          this.#log.warn({ err }, 'claim not handled')
        }
        return
      }
      if (msg.topic !== RECORDS_TOPIC) return
      void this.#records.announced(msg.data).then(async () => { await this.#remember(msg.data) }).catch((err: unknown) => this.#log.warn({ err }, 'announcement not handled'))
    })
    pubsub.subscribe(RECORDS_TOPIC)
    pubsub.subscribe(FETCHING_TOPIC)
    pubsub.subscribe(CLAIMS_TOPIC)
    this.#started = true
    try {
      if (this.#config.socket !== false) this.#control = await startControl(this.#controlComponents(), this.#config.socket, this.#log)
      if (this.#config.metricsListen !== undefined) this.#metricsServer = await serveMetrics(this.metrics, this.#config.metricsListen, this.#log)
    } catch (err) {
      await this.stop()
      throw err instanceof DaemonConfigError ? err : new DaemonConfigError(`cannot listen: ${(err as Error).message}`, { cause: err })
    }
    this.#discovery.start()
    this.#offHeap.start()
    this.#trimmer.start()
    this.#hugePages.start()
    this.budget?.start()
    this.budget?.check()
    this.scrub.start()
    this.scrub.start()
    this.#log.info({ peerId: this.peerId, addresses: this.addresses }, 'daemon started')
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#stopping.abort(new Error('daemon stopping'))
    this.claims.stop()
    await this.#discovery.stop()
    this.#offHeap.stop()
    this.#trimmer.stop()
    this.#hugePages.stop()
    await this.budget?.stop()
    await this.scrub.stop()
    for (const server of [this.#control, this.#metricsServer]) {
      if (server === undefined) continue
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
    if (this.#config.socket !== false) rmSync(this.#config.socket, { force: true })
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

  #controlComponents (): ControlComponents {
    return {
      dataDir: this.dataDir,
      store: this.store,
      budget: this.budget?.init,
      status: async (o) => await this.status(o),
      lookup: async (key, o) => await this.lookup(key, o),
      resolve: async (key, o) => await this.resolve(key, o),
      fetchLayer: async (root, o) => await this.fetchLayer(root, o),
      publish: async (key, o) => await this.publish(key, o),
      commit: async (dir, o) => await this.commit(dir, o),
      removeLayer: async (root, o) => { await this.removeLayer(root, o) },
      gc: async (o) => await this.gc(o),
      putRecord: async (key, value) => { await this.putRecord(key, value) },
      claims: this.claims,
      countHit: (source) => {
        if (source === 'miss') this.metrics.misses.inc()
        else this.metrics.hits.inc({ source })
        this.hits.add(source)
      }
    }
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

  #providers (cid: CID, opts: Omit<ProviderSearchOptions, 'timeoutMs' | 'stop'> & { timeoutMs?: number }): ProviderSearch {
    return new ProviderSearch(this.#search, cid, {
      graceMs: this.#config.providerGraceMs,
      ...opts,
      timeoutMs: opts.timeoutMs ?? this.#config.providerTimeoutMs,
      stop: this.#stopping.signal
    })
  }

  /**
   * Provides what this node just produced, one CID at a time and each once, once the
   * runner has been quiet for a moment (at most ANNOUNCE_MAX_DELAY_MS later): a step's
   * layer and key reach connected peers by gossip at once (and its producer is a
   * fetch hint), while DHT queries between a pipeline's steps would compete with the
   * next step's lookup for the CPU.
   */
  #announce (cid: CID, signal?: AbortSignal): void {
    const k = cidString(cid)
    if (this.#announced.has(k)) return
    this.#announced.set(k, true)
    const queued = Date.now()
    this.#announcing = this.#announcing.then(async () => {
      while (Date.now() - this.#busyAt < ANNOUNCE_QUIET_MS && Date.now() - queued < ANNOUNCE_MAX_DELAY_MS && !this.#stopping.signal.aborted) {
        await sleep(ANNOUNCE_QUIET_MS, undefined, { signal: this.#stopping.signal }).catch(() => {})
      }
      if (signal?.aborted !== true && !this.#stopping.signal.aborted) await this.#provide(cid, signal)
    }).catch((err: unknown) => {
      this.#announced.delete(k)
      this.#log.debug({ err, cid: k }, 'provide failed')
    })
    this.#background(this.#announcing)
  }

  async #provide (cid: CID, signal?: AbortSignal): Promise<void> {
    await this.node.contentRouting.provide(cid, { signal: this.#signal(signal, 30_000) })
  }

  // ---- records and layers ----

  /** Looks a key up in `scopes` (default the read scopes): the local store, then the DHT providers of the key (see RecordService). */
  async lookup (key: CID, opts: { signal?: AbortSignal, scopes?: readonly string[] } = {}): Promise<LookupResult> {
    this.#busyAt = Date.now()
    return await this.#records.lookup(key, opts)
  }

  /** Signs nothing: announces a record the runner already signed and stored, and provides its key and layer. */
  async publish (key: CID, opts: { signal?: AbortSignal, scope?: string } = {}): Promise<StepRecord> {
    return await this.#records.publish(key, opts)
  }

  /** Stores a record; the runner's signed records are announced and provided at once. */
  async putRecord (key: string, value: Uint8Array): Promise<void> {
    this.#busyAt = Date.now()
    await this.#records.put(key, value)
    if (key.startsWith(RECORD_PREFIX)) await this.#remember(value)
  }

  /** Restores a layer from the fleet: every provider is asked, local blocks are taken locally. One fetch per layer at a time. */
  async fetchLayer (root: CID, opts: FetchOptions = {}): Promise<FetchResult> {
    return await this.#hugePages.during(async () => await this.#layers.fetch(root, opts))
  }

  /** Lookup, then fetch: what the runner asks for on a local miss. */
  async resolve (key: CID, opts: FetchOptions & { scopes?: readonly string[] } = {}): Promise<ResolveResult> {
    const t0 = performance.now()
    // Every outcome is one line with `event: 'resolve'`: a miss says which stage failed and why.
    const outcome = (stage: string, extra: Record<string, unknown>): Record<string, unknown> =>
      ({ event: 'resolve', stage, key: key.toString(), peers: this.node.getPeers().length, ms: Math.round(performance.now() - t0), ...extra })
    let found: LookupResult
    try {
      found = await this.lookup(key, { signal: opts.signal, scopes: opts.scopes })
    } catch (err) {
      // No record is the ordinary first run of a step: not a warning.
      this.#log.info(outcome('lookup', { outcome: 'miss', code: (err as { code?: string }).code, reason: (err as { reason?: string }).reason ?? (err as Error).message }), 'resolve: no record')
      throw err
    }
    const hints: PeerId[] = [...(opts.hints ?? [])]
    const producer = parsePeerId(found.record.producer)
    if (producer !== undefined) hints.push(producer)
    let fetched: FetchResult
    try {
      fetched = await this.fetchLayer(found.record.layer, { ...opts, hints })
    } catch (err) {
      // A record names a layer the fleet should hold: a failed fetch is worth a warning.
      this.#log.warn(outcome('fetch', { outcome: 'miss', layer: found.record.layer.toString(), recordSource: found.source, code: (err as { code?: string }).code, reason: (err as Error).message }), 'resolve: record found, layer not fetched')
      throw err
    }
    this.#log.info(outcome('done', { outcome: 'hit', layer: found.record.layer.toString(), recordSource: found.source, providers: fetched.providers, bytes: fetched.bytes }), 'resolved')
    return { ...fetched, record: found.record, envelope: found.envelope, recordSource: found.source, durationMs: performance.now() - t0 }
  }

  // ---- the store, for the runner over the control socket ----

  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    this.#busyAt = Date.now()
    const end = this.metrics.captureDuration.startTimer()
    const layer = await this.#hugePages.during(async () => await this.store.commit(dir, opts))
    end()
    this.budget?.check()
    this.#announce(layer.root)
    return layer
  }

  /** Removes a layer from the store and stops providing it (other peers' DHT entries expire on their own). */
  async removeLayer (root: CID, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.store.removeLayer(root)
    await this.node.contentRouting.cancelReprovide(root, { signal: this.#signal(opts.signal, 5000) }).catch((err: unknown) => this.#log.debug({ err }, 'cancelReprovide failed'))
  }

  /**
   * Peers the DHT knows to hold `root` that say they hold it (asked within 2 s,
   * `/strata/has/1.0.0`), this node included when it does. A provider record
   * outlives its peer by hours, and a live peer whose fetch failed, or that removed
   * the layer, leaves its record behind: counting either would tell GC a last copy is
   * not the last. A peer that cannot be asked (gone, or a daemon without the probe)
   * is not counted.
   */
  async copies (root: CID, opts: { signal?: AbortSignal } = {}): Promise<number> {
    let n = (await this.store.has(root)) ? 1 : 0
    const checks: Array<Promise<boolean | undefined>> = []
    try {
      for await (const peer of this.#providers(root, { signal: opts.signal, timeoutMs: Math.min(this.#config.providerTimeoutMs, 2000), what: 'copies' })) checks.push(this.#hasLayer.ask(peer, root, this.#signal(opts.signal, 2000)))
    } catch {
      // The caller's signal fired: the count so far is what the fleet is known to hold.
    }
    for (const holds of await Promise.all(checks)) if (holds === true) n++
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

  #dhtStats (): DaemonStatus['dht'] {
    const dht = dhtStoreOf(this.node)
    const held = dht?.providerStats ?? { records: 0, peers: 0 }
    return { providerRecords: held.records, providingPeers: held.peers, providersDropped: dht?.counters.providersDropped ?? 0, recordsDropped: dht?.counters.recordsDropped ?? 0 }
  }

  async status (opts: { signal?: AbortSignal, copies?: boolean, liveHeap?: boolean } = {}): Promise<DaemonStatus> {
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
      privateNetwork: this.privateNetwork,
      hits: { ...this.hits.totals },
      recentHits: this.hits.recent,
      recordSync: { ...this.#sync.counters, remembered: this.#sync.remembered },
      claims: { ...this.claimCounters, live: this.claims.table.size, subscribers: this.node.services.pubsub.getSubscribers(CLAIMS_TOPIC).length, rejectedBy: { ...this.claimsRejected } },
      dht: this.#dhtStats(),
      process: {
        ...processStats({ liveHeap: opts.liveHeap }),
        leveldb: { index: this.store.indexMemory?.() ?? 0, dht: dhtStoreOf(this.node)?.dbMemory ?? 0 },
        ...(this.#trimmer.active ? { trims: { ...this.#trimmer.counters } } : {}),
        ...(this.#hugePages.active ? { hugePages: { ...this.#hugePages.counters } } : {})
      }
    }
  }
}

/** Reads the configuration, opens the store and builds the node; call start(). */
export async function createDaemon (init: DaemonInit): Promise<Daemon> {
  const log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'daemon' })
  const config = await readConfig(init, log)
  // STRATA_HUGE_PAGES is checked before anything is opened; the gate, built with the daemon, reads it again.
  try {
    checkHugePagesEnv()
  } catch (err) {
    throw new DaemonConfigError((err as Error).message, { cause: err })
  }
  const privateKey = await loadPrivateKey(config.dataDir)
  const identity = await loadIdentity(config.dataDir)
  const store = init.store ?? await openStore({ dataDir: config.dataDir, logger: init.logger, wait: false, indexWriteBufferBytes: INDEX_WRITE_BUFFER_BYTES, indexFlushEveryMs: INDEX_FLUSH_EVERY_MS })
  try {
    const node = await createNode({
      privateKey,
      listen: config.listen,
      mdns: config.mdns,
      dhtDir: join(config.dataDir, 'dht'),
      ...(config.allowPeers !== undefined ? { allowPeers: config.allowPeers } : {}),
      ...(config.psk !== undefined ? { psk: config.psk } : {})
    })
    return new Daemon(config, store, init.store === undefined, node, log, identity)
  } catch (err) {
    if (init.store === undefined) await store.close()
    throw new DaemonConfigError(`cannot create the libp2p node: ${(err as Error).message}`, { cause: err })
  }
}
