import type { AbortOptions } from '@libp2p/interface'
import { MemoryDatastore } from 'datastore-core'
import { Key } from 'interface-datastore'

/** Provider records the DHT keeps in all; past it the oldest goes. */
export const MAX_PROVIDER_RECORDS = 65_536
/** Provider records one providing peer has here; past it that peer's oldest goes. */
export const MAX_PROVIDER_RECORDS_PER_PEER = 8192
/** Other DHT records (PUT_VALUE) kept; past it the oldest goes. */
export const MAX_DHT_RECORDS = 4096

export interface DhtStoreCounters {
  /** Provider records dropped to make room. */
  providersDropped: number
  /** Other DHT records dropped to make room. */
  recordsDropped: number
}

/**
 * libp2p's in-memory datastore with the DHT's records bounded in count. kad-dht keeps
 * every provider record a peer announces (`ADD_PROVIDER`, one per CID, any number of
 * CIDs) for 48 h, and a `PUT_VALUE` record per key: nothing else bounds them. Provider
 * records are bounded per providing peer (a peer flooding announcements pushes out
 * only its own) and in all (many identities push out the oldest); a dropped record is
 * what a provider record's expiry does early: a lookup may miss that provider until
 * it provides again (every 22 h, and after each fetch).
 */
export class BoundedDhtStore extends MemoryDatastore {
  readonly counters: DhtStoreCounters = { providersDropped: 0, recordsDropped: 0 }
  readonly #providerPrefix: string
  readonly #recordPrefix: string
  readonly #limits: { providers: number, providersPerPeer: number, records: number }
  /** Provider record keys, oldest first, with the peer each names. */
  readonly #providers = new Map<string, string>()
  /** Each providing peer's record keys, oldest first. */
  readonly #byPeer = new Map<string, Set<string>>()
  readonly #records = new Set<string>()

  /** `prefix`: kad-dht's `datastorePrefix`. */
  constructor (prefix: string, limits: Partial<{ providers: number, providersPerPeer: number, records: number }> = {}) {
    super()
    this.#providerPrefix = `${prefix}/provider/`
    this.#recordPrefix = `${prefix}/record/`
    this.#limits = { providers: MAX_PROVIDER_RECORDS, providersPerPeer: MAX_PROVIDER_RECORDS_PER_PEER, records: MAX_DHT_RECORDS, ...limits }
  }

  /** Provider records held, and providing peers. */
  get providerStats (): { records: number, peers: number } {
    return { records: this.#providers.size, peers: this.#byPeer.size }
  }

  /**
   * Stores a copy of `val` in memory of its own. A provider record's value is a few
   * bytes (a time), made as a view into a buffer shared with other allocations (64 KiB
   * of them in a daemon's heap snapshot): kept for the record's 48 h, each pinned the
   * whole buffer, and a daemon's memory outside the V8 heap grew with every CID
   * provided in the fleet.
   */
  override put (key: Key, val: Uint8Array, options?: AbortOptions): ReturnType<MemoryDatastore['put']> {
    const k = key.toString()
    if (k.startsWith(this.#providerPrefix)) this.#admitProvider(k)
    else if (k.startsWith(this.#recordPrefix)) this.#admitRecord(k)
    const own = new Uint8Array(val.byteLength)
    own.set(val)
    return super.put(key, own, options)
  }

  override delete (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['delete']> {
    this.#forget(key.toString())
    return super.delete(key, options)
  }

  /** Makes room for provider record `k` (kad-dht's key: prefix/provider/<multihash>/<peer id>); a renewed one becomes the newest. */
  #admitProvider (k: string): void {
    const peer = k.slice(k.lastIndexOf('/') + 1)
    if (this.#providers.has(k)) this.#forget(k)
    const own = this.#byPeer.get(peer)
    if (own !== undefined && own.size >= this.#limits.providersPerPeer) this.#drop(own.values().next().value!, 'providersDropped')
    if (this.#providers.size >= this.#limits.providers) this.#drop(this.#providers.keys().next().value!, 'providersDropped')
    this.#providers.set(k, peer)
    let set = this.#byPeer.get(peer)
    if (set === undefined) {
      set = new Set()
      this.#byPeer.set(peer, set)
    }
    set.add(k)
  }

  #admitRecord (k: string): void {
    this.#records.delete(k)
    if (this.#records.size >= this.#limits.records) this.#drop(this.#records.values().next().value!, 'recordsDropped')
    this.#records.add(k)
  }

  #drop (k: string, counter: keyof DhtStoreCounters): void {
    this.counters[counter]++
    this.#forget(k)
    void super.delete(new Key(k))
  }

  #forget (k: string): void {
    const peer = this.#providers.get(k)
    if (peer !== undefined) {
      this.#providers.delete(k)
      const set = this.#byPeer.get(peer)
      set?.delete(k)
      if (set?.size === 0) this.#byPeer.delete(peer)
    }
    this.#records.delete(k)
  }
}
