/** What the table needs of its database: a LevelDB (`classic-level`), or a sublevel of one, with string keys and values. */
export interface ProviderDb {
  get(key: string): Promise<string | undefined>
  batch(ops: Array<{ type: 'put', key: string, value: string } | { type: 'del', key: string }>): Promise<void>
  keys(range: { gte: string, lt: string, limit?: number }): AsyncIterable<string>
  iterator(range: { gte: string, lt: string }): AsyncIterable<[string, string]>
  /** LevelDB's properties; a sublevel has none. */
  getProperty?(property: string): string
}

export interface ProviderLimits {
  /** Records held in all; past it the oldest goes. */
  providers: number
  /** Records one providing peer has here; past it that peer's oldest goes. */
  providersPerPeer: number
}

/** Milliseconds as fixed-width hex: the index keys sort by time. */
const when = (time: number): string => time.toString(16).padStart(13, '0')

/**
 * DHT provider records on disk: who provides which CID, since when. Three keys a
 * record, written in one batch (LevelDB applies a batch whole or not at all):
 *
 *   r/<cid>/<peer>          → the time it was provided (ms, decimal)
 *   t/<time>/<cid>/<peer>   the order in all, oldest first
 *   p/<peer>/<time>/<cid>   each peer's order, oldest first
 *
 * A lookup of one CID's providers is a range read of `r/<cid>/`. The heap holds a count
 * per providing peer and nothing per record, so the daemon's memory does not grow with
 * the fleet's layers; the records outlive a restart, as a provider record's 48 h
 * should. Writes run one at a time (a record's old time must be read before it is
 * replaced); reads do not wait.
 */
export class ProviderTable {
  readonly #db: ProviderDb
  readonly #limits: ProviderLimits
  readonly #counts = new Map<string, number>()
  #size = 0
  #tail: Promise<unknown> = Promise.resolve()
  #dropped = 0

  private constructor (db: ProviderDb, limits: ProviderLimits) {
    this.#db = db
    this.#limits = limits
  }

  /** The table in `db`, its counts read from the records already there. */
  static async open (db: ProviderDb, limits: ProviderLimits): Promise<ProviderTable> {
    const table = new ProviderTable(db, limits)
    for await (const key of db.keys({ gte: 'r/', lt: 'r0' })) {
      const peer = key.slice(key.lastIndexOf('/') + 1)
      table.#counts.set(peer, (table.#counts.get(peer) ?? 0) + 1)
      table.#size++
    }
    return table
  }

  /** Records dropped to make room. */
  get dropped (): number {
    return this.#dropped
  }

  get stats (): { records: number, peers: number } {
    return { records: this.#size, peers: this.#counts.size }
  }

  /** Bytes the database holds in memory (block cache, memtables); 0 where it cannot say. */
  get memory (): number {
    try {
      return Number(this.#db.getProperty?.('leveldb.approximate-memory-usage') ?? 0)
    } catch {
      // Closed (the node stopped).
      return 0
    }
  }

  async time (cid: string, peer: string): Promise<number | undefined> {
    const raw = await this.#db.get(`r/${cid}/${peer}`)
    return raw === undefined ? undefined : Number(raw)
  }

  /** Records `peer` providing `cid` at `time`, making room first; a renewed record becomes the newest. */
  async put (cid: string, peer: string, time: number): Promise<void> {
    await this.#serial(async () => {
      const old = await this.time(cid, peer)
      if (old === undefined) {
        if ((this.#counts.get(peer) ?? 0) >= this.#limits.providersPerPeer) await this.#dropOldest(`p/${peer}/`, (k) => this.#pParts(k))
        if (this.#size >= this.#limits.providers) await this.#dropOldest('t/', (k) => this.#tParts(k))
      }
      const ops: Array<{ type: 'put', key: string, value: string } | { type: 'del', key: string }> = []
      if (old !== undefined) ops.push({ type: 'del', key: `t/${when(old)}/${cid}/${peer}` }, { type: 'del', key: `p/${peer}/${when(old)}/${cid}` })
      ops.push(
        { type: 'put', key: `r/${cid}/${peer}`, value: String(time) },
        { type: 'put', key: `t/${when(time)}/${cid}/${peer}`, value: '' },
        { type: 'put', key: `p/${peer}/${when(time)}/${cid}`, value: '' }
      )
      await this.#db.batch(ops)
      if (old === undefined) this.#count(peer, 1)
    })
  }

  /** Deletes one record; false when there was none. */
  async delete (cid: string, peer: string): Promise<boolean> {
    return await this.#serial(async () => await this.#delete(cid, peer))
  }

  /**
   * Records whose CID starts with `cidPrefix`, and when `peerPrefix` is given, whose
   * CID is exactly `cidPrefix` and whose peer starts with `peerPrefix`.
   */
  async * entries (cidPrefix = '', peerPrefix?: string): AsyncGenerator<{ cid: string, peer: string, time: number }> {
    const from = peerPrefix === undefined ? `r/${cidPrefix}` : `r/${cidPrefix}/${peerPrefix}`
    for await (const [key, value] of this.#db.iterator({ gte: from, lt: `${from}\xff` })) {
      const slash = key.lastIndexOf('/')
      yield { cid: key.slice(2, slash), peer: key.slice(slash + 1), time: Number(value) }
    }
  }

  async #delete (cid: string, peer: string): Promise<boolean> {
    const time = await this.time(cid, peer)
    if (time === undefined) return false
    await this.#db.batch([
      { type: 'del', key: `r/${cid}/${peer}` },
      { type: 'del', key: `t/${when(time)}/${cid}/${peer}` },
      { type: 'del', key: `p/${peer}/${when(time)}/${cid}` }
    ])
    this.#count(peer, -1)
    return true
  }

  /** Deletes the first record of the index under `prefix`: the oldest. */
  async #dropOldest (prefix: string, parts: (key: string) => { cid: string, peer: string }): Promise<void> {
    for await (const key of this.#db.keys({ gte: prefix, lt: `${prefix}\xff`, limit: 1 })) {
      const { cid, peer } = parts(key)
      if (await this.#delete(cid, peer)) this.#dropped++
    }
  }

  /** `t/<time>/<cid>/<peer>` */
  #tParts (key: string): { cid: string, peer: string } {
    const [, , cid, peer] = key.split('/')
    return { cid: cid!, peer: peer! }
  }

  /** `p/<peer>/<time>/<cid>` */
  #pParts (key: string): { cid: string, peer: string } {
    const [, peer, , cid] = key.split('/')
    return { cid: cid!, peer: peer! }
  }

  #count (peer: string, by: number): void {
    const n = (this.#counts.get(peer) ?? 0) + by
    if (n > 0) this.#counts.set(peer, n)
    else this.#counts.delete(peer)
    this.#size += by
  }

  async #serial<T> (op: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(op)
    this.#tail = run.catch(() => {})
    return await run
  }
}
