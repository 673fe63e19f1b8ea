import type { AbortOptions } from '@libp2p/interface'
import { MemoryDatastore } from 'datastore-core'
import { Key } from 'interface-datastore'
import type { KeyQuery, Pair, Query } from 'interface-datastore'
import { NotFoundError } from 'interface-store'
import { decode as decodeVarint, encode as encodeVarint, encodingLength } from 'uint8-varint'
import { ProviderTable } from './provider-table.ts'
import type { ProviderDb } from './provider-table.ts'

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
 * libp2p's in-memory datastore with the DHT's records bounded in count, and its provider
 * records in a table on disk (`ProviderTable`). kad-dht keeps every provider record a
 * peer announces (`ADD_PROVIDER`, one per CID, any number of CIDs) for 48 h, and a
 * `PUT_VALUE` record per key: nothing else bounds them. Provider records are bounded per
 * providing peer (a peer flooding announcements pushes out only its own) and in all
 * (many identities push out the oldest); a dropped record is what a provider record's
 * expiry does early: a lookup may miss that provider until it provides again (every
 * 22 h, and after each fetch).
 *
 * A provider record is kad-dht's key `<prefix>/provider/<multihash>/<peer id>` with the
 * time it was provided as its value. Every node within the 20 closest to a CID keeps its
 * records, so in a fleet of up to 20 every daemon keeps every record of the fleet: held
 * in the heap they grew it with every layer made (about 260 bytes a record as a table,
 * 700 as datastore entries). On disk, the heap holds a count per providing peer. Each
 * record still answers `get`, `has`, `delete` and `query` as a datastore entry, its
 * value made afresh from the time; a lookup reads the one CID's records.
 */
export class BoundedDhtStore extends MemoryDatastore {
  #recordsDropped = 0
  readonly #providerPrefix: string
  readonly #recordPrefix: string
  readonly #maxRecords: number
  readonly #table: ProviderTable
  readonly #records = new Set<string>()

  private constructor (prefix: string, table: ProviderTable, maxRecords: number) {
    super()
    this.#providerPrefix = `${prefix}/provider/`
    this.#recordPrefix = `${prefix}/record/`
    this.#table = table
    this.#maxRecords = maxRecords
  }

  /** `prefix`: kad-dht's `datastorePrefix`; `db`: where provider records are kept (and found again after a restart). */
  static async open (prefix: string, db: ProviderDb, limits: Partial<{ providers: number, providersPerPeer: number, records: number }> = {}): Promise<BoundedDhtStore> {
    const table = await ProviderTable.open(db, { providers: limits.providers ?? MAX_PROVIDER_RECORDS, providersPerPeer: limits.providersPerPeer ?? MAX_PROVIDER_RECORDS_PER_PEER })
    return new BoundedDhtStore(prefix, table, limits.records ?? MAX_DHT_RECORDS)
  }

  get counters (): DhtStoreCounters {
    return { providersDropped: this.#table.dropped, recordsDropped: this.#recordsDropped }
  }

  /** Provider records held, and providing peers. */
  get providerStats (): { records: number, peers: number } {
    return this.#table.stats
  }

  /** Bytes the provider records' LevelDB holds in memory. */
  get dbMemory (): number {
    return this.#table.memory
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
      return this.#table.put(provider.cid, provider.peer, providerTime(val, k)).then(() => key)
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
    return this.#table.time(provider.cid, provider.peer).then((time) => {
      if (time === undefined) throw new NotFoundError(`no provider record ${k}`)
      return timeValue(time)
    })
  }

  override has (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['has']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider === undefined) return super.has(key, options)
    options?.signal?.throwIfAborted()
    return this.#table.time(provider.cid, provider.peer).then((time) => time !== undefined)
  }

  override delete (key: Key, options?: AbortOptions): ReturnType<MemoryDatastore['delete']> {
    const k = key.toString()
    const provider = this.#parseProvider(k)
    if (provider === undefined) {
      this.#records.delete(k)
      return super.delete(key, options)
    }
    options?.signal?.throwIfAborted()
    return this.#table.delete(provider.cid, provider.peer).then(() => {})
  }

  override async * _all (q: Query, options?: AbortOptions): AsyncGenerator<Pair> {
    if (!this.#onlyProviders(q.prefix)) yield * super._all(q, options)
    for await (const [key, time] of this.#providerEntries(q.prefix)) {
      options?.signal?.throwIfAborted()
      yield { key: new Key(key), value: timeValue(time) }
    }
  }

  override async * _allKeys (q: KeyQuery, options?: AbortOptions): AsyncGenerator<Key> {
    if (!this.#onlyProviders(q.prefix)) yield * super._allKeys(q, options)
    for await (const [key] of this.#providerEntries(q.prefix)) {
      options?.signal?.throwIfAborted()
      yield new Key(key)
    }
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
  async * #providerEntries (prefix: string | undefined): AsyncGenerator<[string, number]> {
    const p = prefix ?? ''
    let entries: AsyncGenerator<{ cid: string, peer: string, time: number }>
    if (!this.#onlyProviders(p)) {
      if (!this.#providerPrefix.startsWith(p)) return
      entries = this.#table.entries()
    } else {
      const rest = p.slice(this.#providerPrefix.length)
      const slash = rest.indexOf('/')
      // A prefix that stops inside a multihash also covers the longer ones it begins.
      entries = slash < 0 ? this.#table.entries(rest) : this.#table.entries(rest.slice(0, slash), rest.slice(slash + 1))
    }
    for await (const { cid, peer, time } of entries) yield [`${this.#providerPrefix}${cid}/${peer}`, time]
  }

  #admitRecord (k: string): void {
    this.#records.delete(k)
    if (this.#records.size >= this.#maxRecords) {
      const oldest = this.#records.values().next().value!
      this.#recordsDropped++
      this.#records.delete(oldest)
      void super.delete(new Key(oldest))
    }
    this.#records.add(k)
  }
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
