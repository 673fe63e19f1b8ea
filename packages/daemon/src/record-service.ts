import type { PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Store } from '@strata/store'
import { cidString } from '@strata/chunker'
import { DEFAULT_SCOPE, MAX_RECORD_SIZE, RECORD_PREFIX, RecordInvalidError, recordKey, verifyEnvelope } from '@strata/records'
import type { RecordRejectReason, StepRecord, TrustPolicy } from '@strata/records'
import { RecordNotFoundError } from './errors.ts'
import type { ProviderSearch, ProviderSearchOptions } from './providers.ts'
import { MAX_REQUEST_SIZE, RECORDS_PROTOCOL, RECORDS_TOPIC, claimedKey, decodeRecordRequest, encodeRecordRequest } from './records.ts'

/** Record requests in flight for one lookup. */
const LOOKUP_CONCURRENCY = 8

export interface LookupResult {
  record: StepRecord
  /** The signed envelope, as the producer signed it. */
  envelope: Uint8Array
  /**
   * Where it came from: this store, holding a record this node produced ('local') or
   * another node's record it learned earlier, by gossip or an earlier lookup
   * ('gossip'); a connected peer asked directly; or a provider the DHT named.
   */
  source: 'local' | 'gossip' | 'peer' | 'dht'
}

export interface RecordCounters {
  recordsLearned: number
  recordsRejected: number
}

/** What the record service needs from the node and the daemon. */
export interface RecordServiceComponents {
  store: Pick<Store, 'getRecord' | 'putRecord' | 'has'>
  handle(protocol: string, handler: StreamHandler, opts: { maxInboundStreams: number }): Promise<void>
  dialProtocol(peer: PeerId, protocol: string, opts: { signal: AbortSignal, negotiateFully?: boolean }): Promise<Stream>
  /** Publishes on a gossipsub topic. */
  publish(topic: string, data: Uint8Array): Promise<unknown>
  /** A provider search for `cid` (see ProviderSearch). */
  providers(cid: CID, opts: Omit<ProviderSearchOptions, 'timeoutMs' | 'stop'>): ProviderSearch
  /** Provides `cid` on the DHT in the background. */
  provide(cid: CID, signal?: AbortSignal): void
  /** The peers connected now: asked directly, beside the DHT's providers. */
  connectedPeers(): PeerId[]
  /** How many peers the DHT's routing table holds: the peers a DHT query starts from. */
  routablePeers(): number
  /** A record learned by gossip was stored (replication looks at it). */
  learned(record: StepRecord): void
  /** A verified record is in the store now, however it came (gossip, a peer's answer, this node's runner). */
  recorded?(record: StepRecord): void
  logger: Logger
}

export interface RecordServiceInit {
  /** This node's peer id: its own records found in the store are 'local' hits. */
  self: string
  trust: TrustPolicy
  /** Scopes of a lookup that names none, most preferred first. */
  readScopes: readonly string[]
  /** Providers asked for one record at most. */
  maxProviders: number
  /** How long one peer may take to answer a record request. Default 3 000 ms. */
  askTimeoutMs?: number
  counters: RecordCounters
  /** Records refused, by reason. */
  rejected: Partial<Record<RecordRejectReason, number>>
}

/**
 * Signed records in the fleet: looks them up (the local store, then the DHT
 * providers of the key over `/strata/records/2.0.0`), serves them to peers, learns
 * them from gossip and announces the ones the runner stores. Every record is
 * verified under the trust policy before it is stored or used.
 */
export class RecordService {
  readonly #c: RecordServiceComponents
  readonly #init: RecordServiceInit
  readonly #log: Logger

  constructor (components: RecordServiceComponents, init: RecordServiceInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger
  }

  async start (): Promise<void> {
    await this.#c.handle(RECORDS_PROTOCOL, (stream) => { void this.#serve(stream) }, { maxInboundStreams: 8 })
  }

  /** Counts and logs a refused record: every refusal is a miss with its reason. */
  #rejected (err: RecordInvalidError, context: Record<string, unknown>, msg: string): void {
    this.#init.counters.recordsRejected++
    this.#init.rejected[err.reason] = (this.#init.rejected[err.reason] ?? 0) + 1
    this.#log.warn({ event: 'record-rejected', err, reason: err.reason, ...context }, msg)
  }

  /**
   * Looks a key up in `scopes` (default the read scopes), most preferred first. The
   * local store (records learned by gossip are stored there too) is read first;
   * unless it holds a record in the first scope, the DHT providers of the key are
   * asked for the scopes before the best local one. A record in the first scope ends
   * the search; once any usable record is known (here or from a provider) the search
   * ends a grace later; the best record found wins.
   */
  async lookup (key: CID, opts: { signal?: AbortSignal, scopes?: readonly string[] } = {}): Promise<LookupResult> {
    const trust = this.#init.trust
    const scopes = opts.scopes ?? this.#init.readScopes
    let rejected: string | undefined
    let best: (LookupResult & { rank: number }) | undefined
    for (const [rank, scope] of scopes.entries()) {
      const local = await this.#c.store.getRecord(recordKey(key, scope))
      if (local === undefined) continue
      try {
        const record = verifyEnvelope(local, trust.reading([scope]), key)
        best = { record, envelope: local, source: record.producer === this.#init.self ? 'local' : 'gossip', rank }
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
    // With no peer connected nobody can answer, and the DHT would wait for one to appear.
    const connected = this.#c.connectedPeers()
    if (connected.length === 0) {
      if (best !== undefined) return result(best)
      throw new RecordNotFoundError(key.toString(), rejected ?? 'no peer is connected')
    }
    // A DHT query starts from the routing table: when it holds no peer beyond the
    // connected ones, asking each of those directly is the whole search, and it ends
    // when the last has answered.
    const covered = connected.length <= this.#init.maxProviders && this.#c.routablePeers() <= connected.length
    const search = covered ? undefined : this.#c.providers(key, { signal: opts.signal, what: 'record' })
    // With a record here already, a better scope elsewhere is worth a short wait only.
    if (best !== undefined) search?.settle()
    const enough = new AbortController()
    const asked = new Set<string>()
    const running = new Set<Promise<void>>()
    const askOne = async (provider: PeerId, via: 'peer' | 'dht'): Promise<void> => {
      let answers: Uint8Array[]
      try {
        const signals = [enough.signal, AbortSignal.timeout(this.#init.askTimeoutMs ?? 3000)]
        if (opts.signal !== undefined) signals.push(opts.signal)
        answers = await this.#ask(provider, key, wanted, AbortSignal.any(signals))
      } catch (err) {
        this.#log.debug({ err, peer: provider.toString() }, 'record request failed')
        return
      }
      for (const [rank, bytes] of answers.entries()) {
        const scope = wanted[rank]!
        if (bytes.length === 0 || (best !== undefined && best.rank <= rank)) continue
        try {
          const record = verifyEnvelope(bytes, trust.reading([scope]), key)
          await this.#c.store.putRecord(recordKey(key, scope), bytes)
          this.#c.recorded?.(record)
          best = { record, envelope: bytes, source: via, rank }
        } catch (err) {
          if (!(err instanceof RecordInvalidError)) throw err
          rejected = err.message
          this.#rejected(err, { key: key.toString(), scope, peer: provider.toString() }, 'ignoring a record from a peer')
        }
      }
      if (best?.rank === 0) {
        enough.abort(new Error('a record in the first scope was found'))
        search?.end()
      } else if (best !== undefined) {
        search?.settle()
      }
    }
    // Connected peers are asked at once, DHT providers as they are found; a few requests at a time.
    const enqueue = async (provider: PeerId, via: 'peer' | 'dht'): Promise<boolean> => {
      const id = provider.toString()
      if (asked.has(id)) return true
      if (asked.size >= this.#init.maxProviders || enough.signal.aborted) return false
      asked.add(id)
      while (running.size >= LOOKUP_CONCURRENCY) await Promise.race(running)
      const task: Promise<void> = askOne(provider, via).finally(() => running.delete(task))
      running.add(task)
      return true
    }
    const direct = (async () => {
      for (const p of connected) if (!await enqueue(p, 'peer')) break
    })()
    try {
      if (search !== undefined) {
        for await (const provider of search) {
          if (!await enqueue(provider, 'dht')) break
        }
      }
      await direct
      while (running.size > 0) await Promise.allSettled([...running])
    } catch (err) {
      search?.end()
      enough.abort(err)
      await Promise.allSettled([direct, ...running])
      if (opts.signal?.aborted === true) throw err
      this.#log.debug({ err, key: key.toString() }, 'record search ended')
    }
    if (opts.signal?.aborted === true) throw opts.signal.reason
    this.#log.debug({ event: 'record-lookup-end', key: key.toString(), connected: connected.length, asked: asked.size, dht: search !== undefined, found: best !== undefined }, 'record lookup ended')
    if (best !== undefined) return result(best)
    throw new RecordNotFoundError(key.toString(), rejected ?? `none of the ${asked.size} peers asked has one`)
  }

  /** A record announced on the gossip topic: verified (in any scope: a lookup checks the scope when it reads), stored, replicated. */
  async announced (data: Uint8Array): Promise<void> {
    if (data.length > MAX_RECORD_SIZE) return
    let record: StepRecord
    try {
      record = verifyEnvelope(data, this.#init.trust)
    } catch (err) {
      if (!(err instanceof RecordInvalidError)) throw err
      this.#rejected(err, {}, 'ignoring an announced record')
      return
    }
    // Kept for long: a flat string, not the rope toString() builds.
    const k = cidString(record.key)
    const slot = recordKey(k, record.scope)
    const held = await this.#c.store.getRecord(slot)
    if (held === undefined || !this.#verifies(held, record.key, record.scope)) await this.#c.store.putRecord(slot, data)
    this.#c.recorded?.(record)
    this.#init.counters.recordsLearned++
    this.#log.debug({ key: k, layer: record.layer.toString(), producer: record.producer }, 'record learned by gossip')
    this.#c.learned(record)
  }

  #verifies (bytes: Uint8Array, key: CID, scope: string): boolean {
    try {
      verifyEnvelope(bytes, this.#init.trust.reading([scope]), key)
      return true
    } catch {
      return false
    }
  }

  /** Signs nothing: announces a record the runner already signed and stored, and provides its key and layer. */
  async publish (key: CID, opts: { signal?: AbortSignal, scope?: string } = {}): Promise<StepRecord> {
    const scope = opts.scope ?? DEFAULT_SCOPE
    const bytes = await this.#c.store.getRecord(recordKey(key, scope))
    if (bytes === undefined) throw new RecordNotFoundError(key.toString(), `not in the local store in scope ${scope}`)
    const record = verifyEnvelope(bytes, this.#init.trust.reading([scope]), key)
    this.#c.recorded?.(record)
    // The announcement is on its way in the background: the runner's next step need not wait for the peers.
    void this.#c.publish(RECORDS_TOPIC, bytes).catch((err: unknown) => this.#log.debug({ err }, 'gossip publish failed'))
    this.#c.provide(key, opts.signal)
    if (await this.#c.store.has(record.layer)) this.#c.provide(record.layer, opts.signal)
    return record
  }

  /** Stores a record; the runner's signed records are announced and provided at once. */
  async put (key: string, value: Uint8Array): Promise<void> {
    if (!key.startsWith(RECORD_PREFIX)) {
      await this.#c.store.putRecord(key, value)
      return
    }
    const claimed = claimedKey(value)
    if (recordKey(claimed.key, claimed.scope) !== key) throw new RecordInvalidError(key, 'wrong-key', `is about ${recordKey(claimed.key, claimed.scope)}`)
    await this.#c.store.putRecord(key, value)
    await this.publish(claimed.key, { scope: claimed.scope })
  }

  /** The peer's envelopes for `key` in each of `scopes` (empty where it has none). */
  async #ask (peer: PeerId, key: CID, scopes: readonly string[], signal: AbortSignal): Promise<Uint8Array[]> {
    // The protocol name goes out with the request: one round trip less on every ask.
    const stream = await this.#c.dialProtocol(peer, RECORDS_PROTOCOL, { signal, negotiateFully: false })
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

  async #serve (stream: Stream): Promise<void> {
    try {
      const signal = AbortSignal.timeout(10_000)
      // One request of at most 4 KiB: buffering more of what a peer sends is a flood.
      const lp = lpStream(stream, { maxDataLength: MAX_REQUEST_SIZE, maxBufferSize: 16 * MAX_REQUEST_SIZE })
      const req = decodeRecordRequest((await lp.read({ signal })).subarray())
      for (const scope of req.scopes) {
        const bytes = await this.#c.store.getRecord(recordKey(req.key, scope))
        await lp.write(bytes ?? new Uint8Array(0), { signal })
      }
      await stream.close({ signal })
    } catch (err) {
      this.#log.debug({ err }, 'record stream aborted')
      stream.abort(err as Error)
    }
  }
}
