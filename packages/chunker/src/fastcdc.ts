import { createHash } from 'node:crypto'

/**
 * FastCDC (Xia et al., "The Design of Fast Content-Defined Chunking for Data
 * Deduplication Based Storage Systems", 2020) with normalized chunking (level 2)
 * and a gear hash. The parameters and the gear table are part of the layer format:
 * changing any of them changes every CID, so they are fixed here and versioned
 * with the manifest format.
 */
export const MIN_CHUNK = 16 * 1024
export const AVG_CHUNK = 64 * 1024
export const MAX_CHUNK = 256 * 1024

// The hash is 32 bits, shifted left per byte, so bit k depends on the last k+1
// bytes: the masks use high bits (13..30 and 17..30) for a 31-byte window.
// Normalization level 2: two more bits than log2(AVG) before the average size,
// two fewer after it. Bit 31 stays out of the masks so that the loop below can
// test two bytes per step against the masks shifted left by one (the 2020
// paper's "rolling two bytes") and still cut exactly where the one-byte loop would.
const MASK_S = 0x7fffe000 // 18 bits
const MASK_L = 0x7ffe0000 // 14 bits
const MASK_S2 = MASK_S << 1
const MASK_L2 = MASK_L << 1

/** gear[i] = first 4 bytes (big-endian) of sha256("strata/fastcdc/gear/v1" || i). */
export const GEAR: Int32Array = (() => {
  const table = new Int32Array(256)
  for (let i = 0; i < 256; i++) {
    const digest = createHash('sha256').update('strata/fastcdc/gear/v1').update(Uint8Array.of(i)).digest()
    table[i] = digest.readInt32BE(0)
  }
  return table
})()

const GEAR_SHIFTED: Int32Array = GEAR.map((g) => g << 1)

/**
 * Length of the chunk that starts at `start`, looking at no byte at or past `end`.
 * The caller must pass at least MAX_CHUNK bytes unless they are the last bytes of
 * the input; the result is then the same however the input is split into reads.
 */
export function cutPoint (buf: Uint8Array, start: number, end: number): number {
  let n = end - start
  if (n <= MIN_CHUNK) return n
  if (n > MAX_CHUNK) n = MAX_CHUNK
  const gear = GEAR
  const gear2 = GEAR_SHIFTED
  const normal = start + (n < AVG_CHUNK ? n : AVG_CHUNK)
  const stop = start + n
  let h = 0
  let i = start + MIN_CHUNK
  // Two bytes a step: after the first, h << 1 is what a one-byte loop would hold.
  for (; i + 1 < normal; i += 2) {
    h = ((h << 2) + gear2[buf[i]!]!) | 0
    if ((h & MASK_S2) === 0) return i - start + 1
    h = (h + gear[buf[i + 1]!]!) | 0
    if ((h & MASK_S) === 0) return i - start + 2
  }
  for (; i < normal; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0
    if ((h & MASK_S) === 0) return i - start + 1
  }
  for (; i + 1 < stop; i += 2) {
    h = ((h << 2) + gear2[buf[i]!]!) | 0
    if ((h & MASK_L2) === 0) return i - start + 1
    h = (h + gear[buf[i + 1]!]!) | 0
    if ((h & MASK_L) === 0) return i - start + 2
  }
  for (; i < stop; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0
    if ((h & MASK_L) === 0) return i - start + 1
  }
  return n
}

/** Cut lengths of a whole in-memory buffer. */
export function cutAll (buf: Uint8Array): number[] {
  const lengths: number[] = []
  for (let pos = 0; pos < buf.length;) {
    const len = cutPoint(buf, pos, buf.length)
    lengths.push(len)
    pos += len
  }
  return lengths
}

/**
 * Chunks a stream of reads. `read(buf, offset, length)` fills up to `length`
 * bytes at `offset` and returns how many it read, 0 at the end. Each chunk is
 * passed to `onChunk` as a view that is only valid during the call.
 */
export function chunkReader (read: (buf: Uint8Array, offset: number, length: number) => number,
  onChunk: (chunk: Uint8Array) => void, scratch?: Uint8Array): void {
  const buf = scratch ?? new Uint8Array(4 * MAX_CHUNK)
  if (buf.length < 2 * MAX_CHUNK) throw new RangeError('scratch buffer must hold at least 2 * MAX_CHUNK bytes')
  let filled = 0
  let pos = 0
  let eof = false
  for (;;) {
    while (!eof && filled - pos < MAX_CHUNK) {
      if (pos > 0 && buf.length - filled < MAX_CHUNK) {
        buf.copyWithin(0, pos, filled)
        filled -= pos
        pos = 0
      }
      const n = read(buf, filled, buf.length - filled)
      if (n === 0) eof = true
      filled += n
    }
    if (pos >= filled) return
    const len = cutPoint(buf, pos, filled)
    onChunk(buf.subarray(pos, pos + len))
    pos += len
  }
}
