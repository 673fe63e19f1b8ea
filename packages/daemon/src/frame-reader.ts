import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface'
import { LengthPrefixedDecoder } from '@libp2p/utils'
import type { Uint8ArrayList } from 'uint8arraylist'
import { StreamDecompressor } from './compression.ts'
import { DaemonError, PeerLimitError, ProtocolViolationError } from './errors.ts'

export interface FrameReaderOptions {
  maxDataLength: number
  maxQueued: number
  /**
   * The stream's bytes are one zstd stream around the frames: they are decompressed
   * first, up to `allowance()` bytes in all (see StreamDecompressor).
   */
  inflate?: { allowance: () => number }
  /** Told the size of every chunk the stream brings, before decompression. */
  onBytes?: (n: number) => void
}

/**
 * The length-prefixed messages of a stream, cut out of each chunk as the muxer
 * hands it over. `lpStream(stream).read()` awaits a promise per byte of a
 * message's length and throws (and catches) a RangeError for each byte short of
 * a whole varint; at ten thousand blocks a layer that was a few tenths of a second
 * of the fetching thread. Here a chunk is decoded in one go and its messages wait in
 * a queue, which the reader drains before the next chunk arrives.
 */
export class FrameReader {
  readonly #stream: Stream
  readonly #decoder: LengthPrefixedDecoder
  readonly #maxQueued: number
  readonly #frames: Uint8ArrayList[] = []
  readonly #inflate: StreamDecompressor | undefined
  readonly #onBytes: ((n: number) => void) | undefined
  #queued = 0
  #ended = false
  #error: Error | undefined
  #wake: (() => void) | undefined

  /**
   * `maxQueued` bounds the bytes of decoded messages not read yet, and with them
   * what a peer that sends faster than it was asked can make this side hold.
   */
  constructor (stream: Stream, opts: FrameReaderOptions) {
    this.#stream = stream
    this.#maxQueued = opts.maxQueued
    this.#onBytes = opts.onBytes
    // What the decoder holds is at most a partial message and the chunk being cut.
    this.#decoder = new LengthPrefixedDecoder({ maxDataLength: opts.maxDataLength, maxBufferSize: opts.maxDataLength + opts.maxQueued })
    if (opts.inflate !== undefined) {
      this.#inflate = new StreamDecompressor({
        allowance: opts.inflate.allowance,
        maxInput: opts.maxQueued,
        onPlain: (b) => { this.#decode(b) },
        onError: (err) => { this.#fail(err) },
        onEnd: () => { this.#ended = true; this.#wake?.() }
      })
    }
    stream.addEventListener('message', this.#onMessage)
    stream.addEventListener('remoteCloseWrite', this.#onEnd)
    stream.addEventListener('close', this.#onClose)
  }

  /** Decompressed bytes so far (0 on a plain stream). */
  get plainBytes (): number {
    return this.#inflate?.plainBytes ?? 0
  }

  readonly #onMessage = (evt: StreamMessageEvent): void => {
    if (this.#error !== undefined) return
    this.#onBytes?.(evt.data.byteLength)
    if (this.#inflate === undefined) {
      this.#decode(evt.data)
      return
    }
    try {
      this.#inflate.push(evt.data)
    } catch (err) {
      this.#fail(err as Error)
    }
  }

  #decode (data: Uint8Array | Uint8ArrayList): void {
    if (this.#error !== undefined) return
    try {
      for (const frame of this.#decoder.decode(data)) {
        this.#frames.push(frame)
        this.#queued += frame.byteLength
      }
      if (this.#queued > this.#maxQueued) throw new PeerLimitError(`peer sent ${this.#queued} bytes that were not read yet, limit ${this.#maxQueued}`)
    } catch (err) {
      this.#fail(err instanceof DaemonError ? err : new ProtocolViolationError(`peer sent a malformed frame: ${(err as Error).message}`, { cause: err }))
      return
    }
    this.#wake?.()
  }

  #fail (err: Error): void {
    if (this.#error !== undefined) return
    this.#error = err
    this.#inflate?.close()
    // Not from inside the stream's own dispatch.
    queueMicrotask(() => { this.#stream.abort(err) })
    this.#wake?.()
  }

  readonly #onEnd = (): void => {
    // Compressed: the end comes once the decompressor has given out what it holds.
    if (this.#inflate !== undefined) {
      this.#inflate.end()
      return
    }
    this.#ended = true
    this.#wake?.()
  }

  readonly #onClose = (evt: StreamCloseEvent): void => {
    if (evt.error !== undefined) this.#error ??= evt.error
    if (this.#inflate === undefined || evt.error !== undefined) this.#ended = true
    else this.#inflate.end()
    this.#wake?.()
  }

  /** The next message; undefined once the remote end has closed and every message was read. */
  async next (signal: AbortSignal): Promise<Uint8ArrayList | undefined> {
    for (;;) {
      const frame = this.#frames.shift()
      if (frame !== undefined) {
        this.#queued -= frame.byteLength
        return frame
      }
      if (this.#error !== undefined) throw this.#error
      if (this.#ended) return undefined
      signal.throwIfAborted()
      const { promise, resolve, reject } = Promise.withResolvers<void>()
      const onAbort = (): void => { reject(signal.reason) }
      this.#wake = resolve
      signal.addEventListener('abort', onAbort, { once: true })
      try {
        await promise
      } finally {
        this.#wake = undefined
        signal.removeEventListener('abort', onAbort)
      }
    }
  }

  /** Stops listening to the stream. */
  close (): void {
    this.#inflate?.close()
    this.#stream.removeEventListener('message', this.#onMessage)
    this.#stream.removeEventListener('remoteCloseWrite', this.#onEnd)
    this.#stream.removeEventListener('close', this.#onClose)
  }
}
