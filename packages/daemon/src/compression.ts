import { constants, createZstdCompress, createZstdDecompress } from 'node:zlib'
import type { ZstdCompress, ZstdDecompress } from 'node:zlib'
import type { Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { DaemonError } from './errors.ts'

/**
 * zstd level of a serving stream. Chosen by scripts/bench/compression.ts
 * (doc/decisions/compression.md): the ratio gained past it costs more CPU on the
 * serving side than it saves in encryption and transfer.
 */
export const ZSTD_LEVEL = 1
/** Decompressed bytes handed over at a time: a frame reader cuts messages out of each piece. */
const INFLATE_CHUNK = 256 * 1024
/** Compressed output gathered before it goes to the stream: a batch's, as one muxer frame where it fits. */
const DEFLATE_CHUNK = 256 * 1024

/** A peer's compressed bytes are not a zstd stream. */
export class DecompressionError extends DaemonError {
  override name = 'DecompressionError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_DECOMPRESSION', message, opts)
  }
}

/** A peer's compressed bytes expand past what its answers may hold: a compression bomb. */
export class DecompressionLimitError extends DaemonError {
  override name = 'DecompressionLimitError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_DECOMPRESSION_LIMIT', message, opts)
  }
}

/**
 * The serving side of a compressed block stream: one zstd context for the stream's
 * life, so that small blocks are compressed with the context of the blocks sent
 * before them, flushed after every batch so that a batch can be decoded as soon as
 * it arrives. A batch's output goes to the stream in one write (one muxer frame, one
 * window update from the peer, where it fits); a full stream pauses the compressor.
 */
export class StreamCompressor {
  readonly #z: ZstdCompress
  readonly #stream: Stream
  readonly #drainMs: number
  /** Output of the batch being flushed, not written yet. */
  readonly #out = new Uint8ArrayList()
  #failed: Error | undefined
  readonly #failure: Promise<never>

  constructor (stream: Stream, opts: { level?: number, drainMs: number, onBytes?: (n: number) => void }) {
    this.#stream = stream
    this.#drainMs = opts.drainMs
    this.#z = createZstdCompress({ chunkSize: DEFLATE_CHUNK, params: { [constants.ZSTD_c_compressionLevel]: opts.level ?? ZSTD_LEVEL } })
    const z = this.#z
    const failure = Promise.withResolvers<never>()
    failure.promise.catch(() => {})
    this.#failure = failure.promise
    const fail = (err: Error): void => {
      if (this.#failed !== undefined) return
      this.#failed = err
      failure.reject(err)
      z.destroy()
    }
    z.on('error', fail)
    z.on('data', (b: Buffer) => {
      if (this.#failed !== undefined) return
      opts.onBytes?.(b.length)
      this.#out.append(b)
    })
  }

  /** Compresses `bytes` and flushes: resolves once all of it is in the stream's hands. */
  async write (bytes: Uint8ArrayList): Promise<void> {
    if (this.#failed !== undefined) throw this.#failed
    for (const b of bytes) this.#z.write(b)
    await this.#flush(constants.ZSTD_e_flush)
    await this.#send()
  }

  /** Ends the zstd frame (the peer's decompressor expects its end before the stream's). */
  async end (): Promise<void> {
    if (this.#failed !== undefined) throw this.#failed
    const ended = new Promise<void>((resolve) => this.#z.once('end', resolve))
    this.#z.end()
    await Promise.race([ended, this.#failure])
    await this.#send()
  }

  async #send (): Promise<void> {
    if (this.#out.byteLength === 0) return
    const out = this.#out.sublist()
    this.#out.consume(out.byteLength)
    if (!this.#stream.send(out)) await this.#stream.onDrain({ signal: AbortSignal.timeout(this.#drainMs) })
  }

  #flush (kind: number): Promise<void> {
    return Promise.race([new Promise<void>((resolve) => { this.#z.flush(kind, () => resolve()) }), this.#failure])
  }

  close (): void {
    this.#z.destroy()
  }
}

/**
 * The fetching side: decompresses a stream's bytes into `onPlain`, bounded by
 * `allowance()`, the most decompressed bytes the peer may have sent so far (its
 * answers to what it was asked, each at most one frame). A zstd stream expands
 * without a ratio bound that holds for honest data (a block of zeros shrinks to
 * almost nothing), so the bound is on the output against what was asked.
 */
export class StreamDecompressor {
  readonly #z: ZstdDecompress
  readonly #allowance: () => number
  readonly #maxInput: number
  #out = 0
  #failed = false
  #ending = false

  constructor (opts: { allowance: () => number, maxInput: number, onPlain: (b: Buffer) => void, onError: (err: Error) => void, onEnd: () => void }) {
    this.#allowance = opts.allowance
    this.#maxInput = opts.maxInput
    this.#z = createZstdDecompress({ chunkSize: INFLATE_CHUNK })
    const fail = (err: Error): void => {
      if (this.#failed) return
      this.#failed = true
      this.#z.destroy()
      opts.onError(err)
    }
    this.#z.on('error', (err) => {
      // A stream that ends inside a frame was cut short (as a closed stream is), not malformed.
      fail(this.#ending ? new Error(`the stream ended inside a zstd frame: ${err.message}`, { cause: err }) : new DecompressionError(`peer sent bytes that are not zstd: ${err.message}`, { cause: err }))
    })
    this.#z.on('data', (b: Buffer) => {
      if (this.#failed) return
      this.#out += b.length
      const allowed = this.#allowance()
      if (this.#out > allowed) {
        fail(new DecompressionLimitError(`peer's compressed answers expand to more than the ${allowed} bytes it was asked for`))
        return
      }
      opts.onPlain(b)
    })
    this.#z.on('end', () => { if (!this.#failed) opts.onEnd() })
  }

  /** Decompressed bytes so far. */
  get plainBytes (): number {
    return this.#out
  }

  push (bytes: Uint8Array | Uint8ArrayList): void {
    if (this.#failed) return
    if (bytes instanceof Uint8Array) this.#z.write(bytes)
    else for (const b of bytes) this.#z.write(b)
    // Compressed bytes wait here only while zstd works through earlier ones.
    if (this.#z.writableLength > this.#maxInput) {
      this.#failed = true
      this.#z.destroy()
      throw new DecompressionLimitError(`peer sent ${this.#z.writableLength} compressed bytes faster than they could be read, limit ${this.#maxInput}`)
    }
  }

  end (): void {
    if (this.#failed || this.#ending) return
    this.#ending = true
    this.#z.end()
  }

  close (): void {
    this.#failed = true
    this.#z.destroy()
  }
}
