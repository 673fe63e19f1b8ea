import type { PeerId } from '@libp2p/interface'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { cidString } from '@strata/chunker'
import type { LayerInfo, ProgressEvent, Store } from '@strata/store'
import { NoProvidersError } from './errors.ts'
import type { BlockExchange } from './exchange.ts'
import type { ProviderSearch, ProviderSearchOptions } from './providers.ts'
import { Recent } from './recent.ts'
import { FETCHING_TOPIC } from './records.ts'
import type { PeerBlockSource } from './source.ts'

export interface FetchResult {
  layer: LayerInfo
  /** Providers that sent at least one block (0 when the layer was already here). */
  providers: number
  /** Bytes of blocks that came from peers. */
  bytes: number
  durationMs: number
}

export interface FetchOptions {
  signal?: AbortSignal
  /** Peers believed to hold the layer, asked besides the DHT's providers. */
  hints?: readonly PeerId[]
  onProgress?: (event: ProgressEvent) => void
}

/** What fetching layers needs from the node and the daemon. */
export interface LayerFetchComponents {
  peerId: PeerId
  store: Pick<Store, 'getLayer' | 'restore'>
  exchange: Pick<BlockExchange, 'isBanned' | 'source'>
  /** Publishes on a gossipsub topic. */
  publish(topic: string, data: Uint8Array): Promise<unknown>
  providers(cid: CID, opts: Omit<ProviderSearchOptions, 'timeoutMs' | 'stop'>): ProviderSearch
  /** Provides `cid` on the DHT in the background. */
  provide(cid: CID): void
  /** Stops providing `cid` in the background (a fetch that failed). */
  unprovide(cid: CID): void
  /** The caller's signal combined with the daemon's own stop. */
  signal(signal?: AbortSignal): AbortSignal
  /** Starts the fetch-duration timer; the returned function stops it. */
  timeFetch(): () => void
  /** A layer landed in the store (the GC budget looks). */
  fetched(): void
  logger: Logger
}

export interface LayerFetchInit {
  /** Providers asked for one layer at most. */
  maxProviders: number
}

/**
 * Restores layers from the fleet, one fetch per layer at a time: the DHT's
 * providers and the hints are asked, local blocks are taken locally. Peers fetching
 * the same layer at once find each other on the gossip topic `/strata/fetching/1`
 * and split it (see PeerBlockSource).
 */
/** Providers one fetch asks at most, announced sharing peers included. */
export const MAX_FETCH_PROVIDERS = 64

export class LayerFetch {
  readonly #c: LayerFetchComponents
  readonly #init: LayerFetchInit
  readonly #log: Logger
  readonly #inflight = new Map<string, Promise<FetchResult>>()
  readonly #fetching = new Map<string, PeerBlockSource>()
  /** Peers that announced a fetch lately, per layer (bounded: the newest layers, the newest peers). */
  readonly #fetchers = new Map<string, Map<string, PeerId>>()
  readonly #announced = new Recent<number>({ keepMs: 1000, maxEntries: 2000 })

  constructor (components: LayerFetchComponents, init: LayerFetchInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger
  }

  /** Restores a layer from the fleet: every provider is asked, local blocks are taken locally. One fetch per layer at a time. */
  async fetch (root: CID, opts: FetchOptions = {}): Promise<FetchResult> {
    const key = root.toString()
    const running = this.#inflight.get(key)
    if (running !== undefined) return await running
    const p = this.#fetch(root, opts)
    this.#inflight.set(key, p)
    try {
      return await p
    } finally {
      this.#inflight.delete(key)
    }
  }

  async #fetch (root: CID, opts: FetchOptions): Promise<FetchResult> {
    const t0 = performance.now()
    const have = await this.#c.store.getLayer(root)
    if (have !== undefined) return { layer: have, providers: 0, bytes: 0, durationMs: performance.now() - t0 }
    const providers = await this.#findProviders(root, opts)
    if (providers.length === 0) throw new NoProvidersError(root.toString())
    const source = this.#c.exchange.source(providers, { self: this.#c.peerId, refill: async (known, signal) => await this.#moreProviders(root, known, signal) })
    const key = cidString(root)
    this.#fetching.set(key, source)
    // Peers fetching the same layer split it and serve each other what has landed:
    // those that announced it lately, and those that will (they hear us announce).
    for (const peer of this.#fetchers.get(key)?.values() ?? []) if (!this.#c.exchange.isBanned(peer)) source.addProvider(peer)
    this.#announce(root)
    // Later fetchers find this node on the DHT while the layer is still coming.
    this.#c.provide(root)
    const end = this.#c.timeFetch()
    let fetched = false
    try {
      const layer = await this.#c.store.restore(root, source, { untrusted: true, signal: this.#c.signal(opts.signal), onProgress: opts.onProgress })
      fetched = true
      end()
      this.#c.fetched()
      this.#c.provide(root)
      this.#log.info({ layer: key, providers: source.stats.providersUsed, bytes: source.stats.bytes }, 'layer fetched from peers')
      return { layer, providers: source.stats.providersUsed, bytes: source.stats.bytes, durationMs: performance.now() - t0 }
    } finally {
      this.#fetching.delete(key)
      source.close()
      this.#log.debug({ layer: key, providers: source.providerStats }, 'fetch ended')
      if (!fetched) this.#c.unprovide(root)
    }
  }

  /** The hints, then the DHT's providers; once one is known, those that answer within the grace. */
  async #findProviders (root: CID, opts: FetchOptions): Promise<PeerId[]> {
    const providers: PeerId[] = []
    const seen = new Set<string>([this.#c.peerId.toString()])
    const add = (p: PeerId): boolean => {
      if (seen.has(p.toString()) || this.#c.exchange.isBanned(p)) return false
      seen.add(p.toString())
      providers.push(p)
      return true
    }
    for (const h of opts.hints ?? []) if (providers.length < this.#init.maxProviders) add(h)
    if (providers.length >= this.#init.maxProviders) return providers
    const search = this.#c.providers(root, { signal: opts.signal, what: 'layer' })
    if (providers.length > 0) search.settle()
    for await (const p of search) {
      if (!add(p)) continue
      search.settle()
      if (providers.length >= this.#init.maxProviders) break
    }
    return providers
  }

  /**
   * Providers of `root` that a running fetch does not know, for when those it has gave
   * out: the whole search (no grace after the first), since the first the DHT lists
   * again may be dead too.
   */
  async #moreProviders (root: CID, known: ReadonlySet<string>, signal: AbortSignal): Promise<PeerId[]> {
    const found: PeerId[] = []
    const room = MAX_FETCH_PROVIDERS - known.size
    if (room <= 0) return found
    try {
      for await (const p of this.#c.providers(root, { signal, what: 'layer-refill' })) {
        if (known.has(p.toString()) || this.#c.exchange.isBanned(p)) continue
        found.push(p)
        if (found.length >= room) break
      }
    } catch {
      // The fetch ended: nothing more is wanted.
    }
    return found
  }

  #announce (root: CID): void {
    const key = cidString(root)
    const last = this.#announced.get(key) ?? -Infinity
    if (Date.now() - last < 1000) return
    this.#announced.set(key, Date.now())
    this.#c.publish(FETCHING_TOPIC, root.bytes).catch((err: unknown) => this.#log.debug({ err }, 'fetch announcement not sent'))
  }

  /** A peer announced that it is fetching the layer `data` names: it shares our fetch of it, now or later. */
  announced (from: PeerId, data: Uint8Array): void {
    if (data.length > 128) return
    let root: CID
    try {
      root = CID.decode(data)
    } catch {
      return
    }
    const key = cidString(root)
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
    if (source === undefined || this.#c.exchange.isBanned(from)) return
    // Identities are free: past this many, peers announcing the layer are not added to a running fetch.
    if (source.providers.length >= MAX_FETCH_PROVIDERS) return
    source.addProvider(from)
    // The newcomer learns about us in turn.
    this.#announce(root)
  }
}
