import type { PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'

/**
 * Whether a peer holds a whole layer (`/strata/has/1.0.0`): the asker writes the
 * layer's root CID in one length-prefixed frame, the peer answers one byte (1: the
 * layer is in its store, 0: not) and closes. A DHT provider record says a peer once
 * provided the layer; a fetch that failed, or a layer removed since, leaves the
 * record behind for hours: `copies` asks this instead.
 */
export const HAS_LAYER_PROTOCOL = '/strata/has/1.0.0'
/** A CID is far smaller; a frame past this resets the stream. */
const MAX_QUESTION_BYTES = 128
/** Probes of one connection at once (a `copies` asks each peer once per layer). */
const MAX_INBOUND_STREAMS = 8
const SERVE_TIMEOUT_MS = 5000

export interface HasLayerComponents {
  handle(protocol: string, handler: StreamHandler, opts: { maxInboundStreams: number }): Promise<void>
  dialProtocol(peer: PeerId, protocol: string, opts: { signal: AbortSignal }): Promise<Stream>
  /** Whether the whole layer is in this node's store. */
  holds(root: CID): Promise<boolean>
  logger: Logger
}

export class HasLayer {
  readonly #c: HasLayerComponents

  constructor (components: HasLayerComponents) {
    this.#c = components
  }

  async start (): Promise<void> {
    await this.#c.handle(HAS_LAYER_PROTOCOL, (stream) => { void this.#serve(stream) }, { maxInboundStreams: MAX_INBOUND_STREAMS })
  }

  /**
   * Asks `peer` whether it holds the layer `root`: true or false as it answers;
   * undefined when it cannot be asked (gone, silent past `signal`, or a daemon
   * without the protocol).
   */
  async ask (peer: PeerId, root: CID, signal: AbortSignal): Promise<boolean | undefined> {
    let stream: Stream | undefined
    try {
      stream = await this.#c.dialProtocol(peer, HAS_LAYER_PROTOCOL, { signal })
      const lp = lpStream(stream, { maxDataLength: 1 })
      await lp.write(root.bytes, { signal })
      const answer = (await lp.read({ signal })).subarray()
      await stream.close({ signal }).catch(() => {})
      return answer.length === 1 && answer[0] === 1
    } catch (err) {
      stream?.abort(err as Error)
      this.#c.logger.debug({ err, peer: peer.toString(), layer: root.toString() }, 'has-layer probe got no answer')
      return undefined
    }
  }

  async #serve (stream: Stream): Promise<void> {
    try {
      const signal = AbortSignal.timeout(SERVE_TIMEOUT_MS)
      const lp = lpStream(stream, { maxDataLength: MAX_QUESTION_BYTES, maxBufferSize: MAX_QUESTION_BYTES * 2 })
      const root = CID.decode((await lp.read({ signal })).subarray())
      const holds = await this.#c.holds(root)
      await lp.write(Uint8Array.of(holds ? 1 : 0), { signal })
      await stream.close({ signal })
    } catch (err) {
      this.#c.logger.debug({ err }, 'has-layer stream aborted')
      stream.abort(err as Error)
    }
  }
}
