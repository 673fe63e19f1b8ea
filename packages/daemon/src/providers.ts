import type { ContentRouting, PeerId, PeerStore } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'

/** What a provider search needs from the libp2p node. */
export interface ProvidersComponents {
  peerId: PeerId
  contentRouting: Pick<ContentRouting, 'findProviders'>
  peerStore: Pick<PeerStore, 'merge'>
  logger: Logger
}

export interface ProviderSearchOptions {
  /** The caller's signal: when it fires, the search throws its reason. */
  signal?: AbortSignal
  /** Other reasons to end (the daemon stopping): the search just ends. */
  stop?: AbortSignal
  /** Longest the search may run. */
  timeoutMs: number
  /** Once settle() is called, how much longer to wait for others. Default: no grace (the search runs to its timeout). */
  graceMs?: number
  /** What the search is for, in its debug log line. */
  what?: string
}

/**
 * The DHT providers of one CID, each once, never this node, as they are found. A DHT
 * query runs until its own timeout; once the caller knows something usable
 * (`settle()`), the providers that answer within a short grace are enough. A search
 * that times out or is settled just ends; one whose caller's signal fires throws.
 */
export class ProviderSearch implements AsyncIterable<PeerId> {
  readonly #c: ProvidersComponents
  readonly #cid: CID
  readonly #opts: ProviderSearchOptions
  readonly #enough = new AbortController()
  #grace: NodeJS.Timeout | undefined
  /** Fires when the search ends for any reason: what the caller's requests to the providers found should use. */
  readonly signal: AbortSignal

  constructor (components: ProvidersComponents, cid: CID, opts: ProviderSearchOptions) {
    this.#c = components
    this.#cid = cid
    this.#opts = opts
    const signals = [this.#enough.signal, AbortSignal.timeout(opts.timeoutMs)]
    if (opts.signal !== undefined) signals.push(opts.signal)
    if (opts.stop !== undefined) signals.push(opts.stop)
    this.signal = AbortSignal.any(signals)
  }

  /** Something usable is known: the search ends `graceMs` from the first call. */
  settle (): void {
    if (this.#opts.graceMs === undefined || this.#enough.signal.aborted) return
    this.#grace ??= setTimeout(() => this.#enough.abort(new Error('enough is known')), this.#opts.graceMs)
  }

  /** Nothing more is wanted: the search ends now. */
  end (): void {
    if (!this.#enough.signal.aborted) this.#enough.abort(new Error('search ended by its caller'))
  }

  async * [Symbol.asyncIterator] (): AsyncGenerator<PeerId> {
    const self = this.#c.peerId.toString()
    const seen = new Set<string>()
    let ran = false
    try {
      for await (const p of this.#c.contentRouting.findProviders(this.#cid, { signal: this.signal })) {
        const k = p.id.toString()
        if (k === self || seen.has(k)) continue
        seen.add(k)
        if (p.multiaddrs.length > 0) await this.#c.peerStore.merge(p.id, { multiaddrs: p.multiaddrs }).catch(() => {})
        yield p.id
      }
      ran = true
    } catch (err) {
      ran = true
      if (this.#opts.signal?.aborted === true) throw err
      this.#c.logger.debug({ err, cid: this.#cid.toString(), what: this.#opts.what }, 'provider search ended')
    } finally {
      clearTimeout(this.#grace)
      // Why it ended, as a stable field: a miss that waits out the timeout is slow for every step that misses.
      this.#c.logger.debug({ event: 'provider-search-end', end: ran ? this.#end() : 'caller', cid: this.#cid.toString(), what: this.#opts.what, providers: seen.size }, 'provider search done')
    }
  }

  /** Why a search that ran to its end ended: the DHT query ran out (`exhausted`), or which signal stopped it. */
  #end (): 'exhausted' | 'settled' | 'stopped' | 'cancelled' | 'timeout' {
    if (!this.signal.aborted) return 'exhausted'
    if (this.#enough.signal.aborted) return 'settled'
    if (this.#opts.stop?.aborted === true) return 'stopped'
    if (this.#opts.signal?.aborted === true) return 'cancelled'
    return 'timeout'
  }
}
