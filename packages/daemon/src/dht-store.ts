import type { AbortOptions } from '@libp2p/interface'
import { MemoryDatastore } from 'datastore-core'
import { Key } from 'interface-datastore'
import type { KeyQuery, Pair, Query } from 'interface-datastore'
import { NotFoundError } from 'interface-store'
import { decode as decodeVarint, encode as encodeVarint, encodingLength } from 'uint8-varint'

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

export class ProviderValueError extends Error {
  override name = 'ProviderValueError'
  code = 'ERR_DHT_PROVIDER_VALUE'
}

/**
 * Records in the order they were written, as parallel arrays (no object per record). An
 * entry whose time is no longer its record's (renewed since, or deleted) is stale and
 * skipped; stale entries are compacted away once they are half the queue.
 */
class RecordQueue {
  #cids: string[] = []
  #peers: string[] = []
  #times: number[] = []
  #head = 0

  get length (): number { return this.#cids.length - this.#head }

  push (cid: string, peer: string, time: number): void {
    this.#cids.push(cid)
    this.#peers.push(peer)
    this.#times.push(time)
  }

  /** Removes and returns the oldest entry whose record still has its time, or undefined. */
  shift (live: (cid: string, peer: string, time: number) => boolean): { cid: string, peer: string } | undefined {
    while (this.#head < this.#cids.length) {
      const i = this.#head++
      const cid = this.#cids[i]!
      const peer = this.#peers[i]!
      if (live(cid, peer, this.#times[i]!)) return { cid, peer }
    }
    return undefined
  }

  /** Drops the stale entries when the queue holds more than twice `live` of them. */
  compact (live: number, isLive: (cid: string, peer: string, time: number) => boolean): void {
    if (this.length <= 2 * live + 64) return
    const cids: string[] = []
    const peers: string[] = []
    const times: number[] = []
    for (let i = this.#head; i < this.#cids.length; i++) {
      if (!isLive(this.#cids[i]!, this.#peers[i]!, this.#times[i]!)) continue
      cids.push(this.#cids[i]!)
      peers.push(this.#peers[i]!)
      times.push(this.#times[i]!)
    }
    this.#cids = cids
    this.#peers = peers
    this.#times = times
    this.#head = 0
  }
}

/**
 * libp2p's in-memory datastore with the DHT's records bounded in count, and its provider
 * records in a table of their own. kad-dht keeps every provider record a peer announces
 * (`ADD_PROVIDER`, one per CID, any number of CIDs) for 48 h, and a `PUT_VALUE` record
 * per key: nothing else bounds them. Provider records are bounded per providing peer (a
 * peer flooding announcements pushes out only its own) and in all (many identities push
 * out the oldest); a dropped record is what a provider record's expiry does early: a
 * lookup may miss that provider until it provides again (every 22 h, and after each fetch).
 *
 * A provider record is kad-dht's key `<prefix>/provider/<multihash>/<peer id>` with the
 * time it was provided as its value. Kept as datastore entries, each cost about 700 bytes
 * (two copies of its 120-character key, a buffer for the time, a map entry) and every
 * lookup of one CID's providers scanned every entry of the datastore. The table keeps a
 * CID's multihash text once, each peer id once for all its records, and a time per
 * record; a lookup reads the one CID's records. Each record still answers `get`, `has`,
 * `delete` and `query` as a datastore entry, its value made afresh from the time.
 */
export class BoundedDhtStore extends MemoryDatastore {
  readonly counters: DhtStoreCounters = { providersDropped: 0, recordsDropped: 0 }
  readonly #providerPrefix: string
  readonly #recordPrefix: string
  readonly #limits: { providers: number, providersPerPeer: number, records: number }
  /** Multihash text → its one kept copy, and each providing peer's time provided (ms). */
  readonly #byCid = new Map<string, { cid: string, peers: Map<string, number> }>()
  /** Each providing peer's id text (the one copy every record of it shares), its record count and order. */
  readonly #byPeer = new Map<string, { id: string, count: number, order: RecordQueue }>()
  readonly #order = new RecordQueue()
  #size = 0
  readonly #records = new Set<string>()
  readonly #isLive = (cid: string, peer: string, time: number): boolean => this.#timeOf(cid, peer) === time

  /** `prefix`: kad-dht's `datastorePrefix`. */
  constructor (prefix: string, limits: Partial<{ providers: number, providersPerPeer: number, records: number }> = {}) {
    super()
    this.#providerPrefix = `${prefix}/provider/`
    this.#recordPrefix = `${prefix}/record/`
    this.#limits = { providers: MAX_PROVIDER_RECORDS, providersPerPeer: MAX_PROVIDER_RECORDS_PER_PEER, records: MAX_DHT_RECORDS, ...limits }
  }

  /** Provider records held, and providing peers. */
  get providerStats (): { records: number, peers: number } {
    return { records: this.#size, peers: this.#byPeer.size }
  }

  /**
   * A provider record goes to the table; anything else is stored as a copy of `val` in
   * memory of its own. A value is a few bytes made as a view into a buffer shared with
   * other allocations (64 KiB of them in a daemon's heap snapshot): kept for a record's
   * 48 h, each pinned the whole buffer.
   */
  override put (key: Key, val: Uint8Array, options?: AbortOptions): ReturnType<MemoryDatastore['put']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider !== undefined) {
      options?.signal?.throwIfAborted()
      this.#putProvider(provider.cid, provider.peer, providerTime(val, k))
      return key
    }
    if (k.startsWith(this.#recordPrefix)) this.#admitRecord(k)
    const own = new Uint8Array(val.byteLength)
    own.set(val)
    return super.put(key, own, options)
  }

  override get (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['get']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider === undefined) return super.get(key, options)
    options?.signal?.throwIfAborted()
    const time = this.#timeOf(provider.cid, provider.peer)
    if (time === undefined) throw new NotFoundError(`no provider record ${k}`)
    return timeValue(time)
  }

  override has (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['has']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider === undefined) return super.has(key, options)
    options?.signal?.throwIfAborted()
    return this.#timeOf(provider.cid, provider.peer) !== undefined
  }

  override delete (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['delete']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider === undefined) {
      this.#records.delete(k)
      return super.delete(key, options)
    }
    options?.signal?.throwIfAborted()
    this.#deleteProvider(provider.cid, provider.peer)
  }

  override async * _all (q: Query, options?: AbortOptions): AsyncGenerator<Pair> {
    if (!this.#onlyProviders(q.prefix)) yield * super._all(q, options)
    for (const [key, time] of this.#providerEntries(q.prefix)) {
      options?.signal?.throwIfAborted()
      yield { key: new Key(key), value: timeValue(time) }
    }
  }

  override async * _allKeys (q: KeyQuery, options?: AbortOptions): AsyncGenerator<Key> {
    if (!this.#onlyProviders(q.prefix)) yield * super._allKeys(q, options)
    for (const [key] of this.#providerEntries(q.prefix)) {
      options?.signal?.throwIfAborted()
      yield new Key(key)
    }
  }

  /** When `peer` provided `cid`, as this table holds it. */
  #timeOf (cid: string, peer: string): number | undefined {
    return this.#byCid.get(cid)?.peers.get(peer)
  }

  /** `<prefix>/provider/<cid>/<peer>` as its two parts, or undefined for any other key. */
  #parseProvider (k: string): { cid: string, peer: string } | undefined {
    if (!k.startsWith(this.#providerPrefix)) return undefined
    const slash = k.indexOf('/', this.#providerPrefix.length)
    if (slash < 0 || k.indexOf('/', slash + 1) >= 0) return undefined
    return { cid: k.slice(this.#providerPrefix.length, slash), peer: k.slice(slash + 1) }
  }

  /** Whether every key under `prefix` is a provider record's. */
  #onlyProviders (prefix: string | undefined): boolean {
    return prefix !== undefined && prefix.startsWith(this.#providerPrefix)
  }

  /** The provider records whose key starts with `prefix` (all of them when it covers the table). */
  * #providerEntries (prefix: string | undefined): Generator<[string, number]> {
    const p = prefix ?? ''
    if (!this.#onlyProviders(p)) {
      if (!this.#providerPrefix.startsWith(p)) return
      for (const { cid, peers } of [...this.#byCid.values()]) yield * this.#cidEntries(cid, peers, '')
      return
    }
    const rest = p.slice(this.#providerPrefix.length)
    const slash = rest.indexOf('/')
    const cid = slash < 0 ? rest : rest.slice(0, slash)
    const exact = this.#byCid.get(cid)
    if (exact !== undefined) yield * this.#cidEntries(cid, exact.peers, slash < 0 ? '' : rest.slice(slash + 1))
    // A prefix that stops inside a multihash also covers the longer ones it begins.
    if (slash < 0) {
      for (const { cid: other, peers } of [...this.#byCid.values()]) if (other !== cid && other.startsWith(cid)) yield * this.#cidEntries(other, peers, '')
    }
  }

  * #cidEntries (cid: string, peers: Map<string, number>, peerPrefix: string): Generator<[string, number]> {
    for (const [peer, time] of [...peers]) {
      if (peer.startsWith(peerPrefix)) yield [`${this.#providerPrefix}${cid}/${peer}`, time]
    }
  }

  /** Records `peer` providing `cid` at `time`, making room first; a renewed record becomes the newest. */
  #putProvider (cidText: string, peerText: string, time: number): void {
    if (this.#timeOf(cidText, peerText) === undefined) {
      const own = this.#byPeer.get(peerText)
      if (own !== undefined && own.count >= this.#limits.providersPerPeer) this.#dropOldest(own.order)
      if (this.#size >= this.#limits.providers) this.#dropOldest(this.#order)
    }
    // Looked up after making room: dropping may have removed this CID's or this peer's last record.
    let entry = this.#byCid.get(cidText)
    if (entry === undefined) {
      entry = { cid: flat(cidText), peers: new Map() }
      this.#byCid.set(entry.cid, entry)
    }
    let peer = this.#byPeer.get(peerText)
    if (peer === undefined) {
      peer = { id: flat(peerText), count: 0, order: new RecordQueue() }
      this.#byPeer.set(peer.id, peer)
    }
    if (!entry.peers.has(peer.id)) {
      this.#size++
      peer.count++
    }
    entry.peers.set(peer.id, time)
    peer.order.push(entry.cid, peer.id, time)
    this.#order.push(entry.cid, peer.id, time)
    peer.order.compact(peer.count, this.#isLive)
    this.#order.compact(this.#size, this.#isLive)
  }

  #dropOldest (queue: RecordQueue): void {
    const oldest = queue.shift(this.#isLive)
    if (oldest === undefined) return
    this.counters.providersDropped++
    this.#deleteProvider(oldest.cid, oldest.peer)
  }

  #deleteProvider (cid: string, peerText: string): void {
    const entry = this.#byCid.get(cid)
    if (entry?.peers.delete(peerText) !== true) return
    if (entry.peers.size === 0) this.#byCid.delete(cid)
    this.#size--
    const peer = this.#byPeer.get(peerText)!
    if (--peer.count === 0) this.#byPeer.delete(peerText)
  }

  #admitRecord (k: string): void {
    this.#records.delete(k)
    if (this.#records.size >= this.#limits.records) {
      const oldest = this.#records.values().next().value!
      this.counters.recordsDropped++
      this.#records.delete(oldest)
      void super.delete(new Key(oldest))
    }
    this.#records.add(k)
  }
}

/**
 * A copy of `s` that holds no other string: a slice of a key would keep the whole key,
 * and a record keeps its CID and peer texts for up to 48 h. Keys are ASCII.
 */
function flat (s: string): string {
  return Buffer.from(s, 'latin1').toString('latin1')
}

/** A provider record's value: the time it was provided (ms since the epoch) as a varint. */
function providerTime (val: Uint8Array, key: string): number {
  let time: number | undefined
  try {
    time = decodeVarint(val)
  } catch {
    time = undefined
  }
  if (time !== undefined && Number.isSafeInteger(time) && encodingLength(time) === val.byteLength) return time
  throw new ProviderValueError(`provider record ${key}: value is not one varint time (${val.byteLength} bytes)`)
}

/** A fresh buffer of its own holding `time` as kad-dht writes it. */
function timeValue (time: number): Uint8Array {
  const out = new Uint8Array(encodingLength(time))
  encodeVarint(time, out)
  return out
}
