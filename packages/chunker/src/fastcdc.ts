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

// cutPoint reads private copies: V8 builds a module's own constants into optimized
// code but not its exports, and with the sizes known it drops the overflow checks
// on the indices.
const MIN = MIN_CHUNK
const AVG = AVG_CHUNK
const MAX = MAX_CHUNK
const GEAR_TABLE: Int32Array = GEAR

/**
 * Length of the chunk that starts at `start`, looking at no byte at or past `end`.
 * The caller must pass at least MAX_CHUNK bytes unless they are the last bytes of
 * the input; the result is then the same however the input is split into reads.
 */
export function cutPoint (buf: Uint8Array, start: number, end: number): number {
  const n = Math.min(end - start, MAX)
  if (n <= MIN) return end - start
  if (start < 0 || end > buf.length) throw new RangeError(`bytes ${start} to ${end} are not all in a buffer of ${buf.length}`)
  // Indices into a view that begins at `start` stay below MAX, and getUint32 reads
  // four bytes with one bounds check.
  const view = new DataView(buf.buffer, buf.byteOffset + start, n)
  const gear = GEAR_TABLE
  const gear2 = GEAR_SHIFTED
  const normal = Math.min(n, AVG)
  let h = 0
  let i = MIN
  // Every cut leaves through one `return i + k`: an addition on each of the 34
  // exits would have no type feedback until its exit had been taken, and optimized
  // code that reaches such an exit is thrown away and compiled again, over and
  // over in the workers of one large pack.
  let k = 0
  cut: {
    // Sixteen bytes a step, read as four little-endian words, two bytes at a time:
    // after the first of two, h << 1 is what a one-byte loop would hold.
    for (const last = normal - 15; i < last; i += 16) {
      let w = view.getUint32(i, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 1; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_S) === 0) { k = 2; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 3; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_S) === 0) { k = 4; break cut }
      w = view.getUint32(i + 4, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 5; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_S) === 0) { k = 6; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 7; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_S) === 0) { k = 8; break cut }
      w = view.getUint32(i + 8, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 9; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_S) === 0) { k = 10; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 11; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_S) === 0) { k = 12; break cut }
      w = view.getUint32(i + 12, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 13; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_S) === 0) { k = 14; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_S2) === 0) { k = 15; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_S) === 0) { k = 16; break cut }
    }
    for (; i < normal; i++) {
      h = ((h << 1) + gear[view.getUint8(i)]!) | 0
      if ((h & MASK_S) === 0) { k = 1; break cut }
    }
    for (const last = n - 15; i < last; i += 16) {
      let w = view.getUint32(i, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 1; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_L) === 0) { k = 2; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 3; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_L) === 0) { k = 4; break cut }
      w = view.getUint32(i + 4, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 5; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_L) === 0) { k = 6; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 7; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_L) === 0) { k = 8; break cut }
      w = view.getUint32(i + 8, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 9; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_L) === 0) { k = 10; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 11; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_L) === 0) { k = 12; break cut }
      w = view.getUint32(i + 12, true)
      h = ((h << 2) + gear2[w & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 13; break cut }
      h = (h + gear[(w >>> 8) & 0xff]!) | 0
      if ((h & MASK_L) === 0) { k = 14; break cut }
      h = ((h << 2) + gear2[(w >>> 16) & 0xff]!) | 0
      if ((h & MASK_L2) === 0) { k = 15; break cut }
      h = (h + gear[w >>> 24]!) | 0
      if ((h & MASK_L) === 0) { k = 16; break cut }
    }
    for (; i < n; i++) {
      h = ((h << 1) + gear[view.getUint8(i)]!) | 0
      if ((h & MASK_L) === 0) { k = 1; break cut }
    }
    // No cut: the chunk is all n bytes, and i is n.
  }
  return i + k
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
