import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'
import type { LayerVerification, VerifyOptions } from '@strata/store'
import { RateLimiter } from './rate.ts'

/** What the scrub needs from the store: the layers, and a verification that marks what it finds corrupt. */
export interface ScrubStore {
  layerRoots(): Promise<string[]>
  verifyLayer(root: string, opts?: VerifyOptions): Promise<LayerVerification>
}

export interface ScrubComponents {
  store: ScrubStore
  logger: Logger
}

export interface ScrubInit {
  /** Layer content read per second at most; 0 turns the scrub off. Default 20 MB/s (DEFAULT_SCRUB_RATE). */
  bytesPerSecond?: number
  /** Pause between two passes over the store. Default 3 600 000 ms. */
  intervalMs?: number
  /** Pause before the first pass, so that a daemon's start is not slowed. Default 60 000 ms. */
  delayMs?: number
}

export const DEFAULT_SCRUB_RATE = 20_000_000

export interface ScrubPass {
  layers: number
  bytes: number
  /** Roots found corrupt in this pass (not those marked before). */
  corrupt: string[]
}

/**
 * Re-reads every layer of the store at a bounded rate, in passes, so that a layer
 * rotting on disk (or changed behind the store's back) is marked corrupt before a
 * hit or a peer uses it. Layers marked before are not read again.
 */
export class Scrubber {
  readonly rate: number
  readonly counters = { passes: 0, layers: 0, bytes: 0, corrupt: 0 }
  readonly #c: ScrubComponents
  readonly #log: Logger
  readonly #intervalMs: number
  readonly #delayMs: number
  #stop: AbortController | undefined
  #loop: Promise<void> | undefined

  constructor (components: ScrubComponents, init: ScrubInit = {}) {
    const rate = init.bytesPerSecond ?? DEFAULT_SCRUB_RATE
    if (!Number.isSafeInteger(rate) || rate < 0) throw new TypeError(`the scrub rate must be a whole number of bytes a second >= 0, got ${rate}`)
    this.rate = rate
    this.#c = components
    this.#log = components.logger.child({ component: 'scrub' })
    this.#intervalMs = init.intervalMs ?? 3_600_000
    this.#delayMs = init.delayMs ?? 60_000
  }

  start (): void {
    if (this.rate === 0 || this.#loop !== undefined) return
    const stop = new AbortController()
    this.#stop = stop
    this.#loop = (async () => {
      let wait = this.#delayMs
      while (!stop.signal.aborted) {
        try {
          await sleep(wait, undefined, { signal: stop.signal, ref: false })
          await this.pass({ signal: stop.signal })
        } catch (err) {
          if (stop.signal.aborted) return
          this.#log.warn({ err }, 'a scrub pass failed; the next one starts after the interval')
        }
        wait = this.#intervalMs
      }
    })()
  }

  async stop (): Promise<void> {
    this.#stop?.abort(new Error('scrub stopping'))
    await this.#loop
    this.#loop = undefined
    this.#stop = undefined
  }

  /** One pass over every layer, reading at most `rate` bytes a second. */
  async pass (opts: { signal?: AbortSignal } = {}): Promise<ScrubPass> {
    if (this.rate === 0) throw new TypeError('the scrub is off (rate 0)')
    // A second's worth of bytes may go at once; files are read whole, so a large one waits after its read.
    const limiter = new RateLimiter(this.rate, this.rate)
    const out: ScrubPass = { layers: 0, bytes: 0, corrupt: [] }
    for (const root of await this.#c.store.layerRoots()) {
      opts.signal?.throwIfAborted()
      let v: LayerVerification
      try {
        v = await this.#c.store.verifyLayer(root, {
          signal: opts.signal,
          onRead: async (n) => {
            const ms = limiter.take('scrub', n)
            if (ms > 0) await sleep(ms, undefined, { signal: opts.signal })
          }
        })
      } catch (err) {
        // A layer removed (collected, replaced) while it was read: the rest of the pass goes on.
        if (opts.signal?.aborted === true) throw err
        this.#log.warn({ err, layer: root }, 'could not scrub a layer')
        continue
      }
      out.layers++
      out.bytes += v.bytes
      this.counters.layers++
      this.counters.bytes += v.bytes
      if (v.status === 'corrupt' && v.marked !== true) {
        out.corrupt.push(root)
        this.counters.corrupt++
        this.#log.error({ event: 'layer-corrupt', layer: root, path: v.path, reason: v.reason }, 'the scrub found a corrupt layer and marked it')
      }
    }
    this.counters.passes++
    this.#log.info({ event: 'scrub-pass', layers: out.layers, bytes: out.bytes, corrupt: out.corrupt.length }, 'scrub pass done')
    return out
  }
}

export function createScrubber (components: ScrubComponents, init?: ScrubInit): Scrubber {
  return new Scrubber(components, init)
}
