import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { AVG_CHUNK, chunkReader, cutAll, cutPoint, MAX_CHUNK, MIN_CHUNK } from '../src/fastcdc.ts'

/** Deterministic pseudo-random bytes (sha256 in counter mode). */
function bytes (n: number, seed: string): Uint8Array {
  const out = new Uint8Array(n)
  for (let off = 0, i = 0; off < n; off += 32, i++) {
    const block = createHash('sha256').update(seed).update(String(i)).digest()
    out.set(block.subarray(0, Math.min(32, n - off)), off)
  }
  return out
}

/** gear[i] = first 4 bytes (big-endian) of sha256("strata/fastcdc/gear/v1" || i), as the format defines it. */
const GEAR = Array.from({ length: 256 }, (_, i) =>
  createHash('sha256').update('strata/fastcdc/gear/v1').update(Uint8Array.of(i)).digest().readInt32BE(0))

/** The cut rule one byte at a time: the format's definition, against which the fast loop is held. */
function referenceCut (buf: Uint8Array, start: number, end: number): number {
  const n = Math.min(end - start, MAX_CHUNK)
  if (n <= MIN_CHUNK) return end - start
  let h = 0
  for (let k = MIN_CHUNK; k < n; k++) {
    h = ((h << 1) + GEAR[buf[start + k]!]!) | 0
    const mask = k < AVG_CHUNK ? 0x7fffe000 : 0x7ffe0000
    if ((h & mask) === 0) return k + 1
  }
  return n
}

/** Lengths up to `limit` from `start` at which the hash meets the 14-bit mask: the only places where either mask can cut. */
function candidateCuts (buf: Uint8Array, start: number, limit: number): number[] {
  const lengths: number[] = []
  let h = 0
  for (let k = MIN_CHUNK; k < limit; k++) {
    h = ((h << 1) + GEAR[buf[start + k]!]!) | 0
    if ((h & 0x7ffe0000) === 0) lengths.push(k + 1)
  }
  return lengths
}

test('cuts where the one-byte-at-a-time gear hash does', () => {
  const text = Buffer.from(Array.from({ length: 40_000 }, (_, i) => `${i}: layer ${i % 7} chunk ${(i * 31) % 1000}\n`).join(''))
  const pattern = new Uint8Array(3 * MAX_CHUNK).map((_, i) => [1, 2, 3, 5, 8, 13, 21][i % 7]!)
  const inputs = { random: bytes(4 * 1024 * 1024, 'reference'), text, zeros: new Uint8Array(3 * MAX_CHUNK), pattern }
  for (const [name, input] of Object.entries(inputs)) {
    // An odd byteOffset, so that no read lines up with the underlying buffer.
    const backing = new Uint8Array(input.length + 3)
    backing.set(input, 3)
    const buf = backing.subarray(3)
    const expect = (start: number, end: number): void => {
      assert.equal(cutPoint(buf, start, end), referenceCut(buf, start, end), `${name}, bytes ${start} to ${end}`)
    }
    for (let pos = 0; pos < buf.length;) {
      const len = cutPoint(buf, pos, buf.length)
      expect(pos, buf.length)
      // Windows that end just before and after each place up to the cut where a mask
      // could cut put that place in every position of the last, partly filled step.
      for (const at of candidateCuts(buf, pos, len)) {
        for (let k = -1; k <= 16; k++) if (pos + at + k <= buf.length) expect(pos, pos + at + k)
        // Starts that put the same place just before and after the switch of masks.
        for (let k = -2; k <= 2; k++) if (pos + at - AVG_CHUNK + k >= 0) expect(pos + at - AVG_CHUNK + k, buf.length)
      }
      pos += len
    }
    for (const size of [MIN_CHUNK, AVG_CHUNK, MAX_CHUNK]) {
      for (let k = -9; k <= 9; k++) {
        const start = 1 + (size + k) % 13
        expect(start, Math.min(buf.length, start + size + k))
      }
    }
  }
})

test('refuses a window that reaches outside the buffer', () => {
  const buf = new Uint8Array(2 * MAX_CHUNK).subarray(0, MAX_CHUNK)
  assert.throws(() => cutPoint(buf, 0, MAX_CHUNK + 1), RangeError)
  assert.throws(() => cutPoint(buf, -1, MAX_CHUNK), RangeError)
})

test('covers every byte exactly once, within the size bounds', () => {
  const data = bytes(8 * 1024 * 1024 + 12345, 'cover')
  const lengths = cutAll(data)
  assert.equal(lengths.reduce((a, b) => a + b, 0), data.length)
  lengths.forEach((len, i) => {
    assert.ok(len <= MAX_CHUNK, `chunk ${i} is ${len}`)
    if (i < lengths.length - 1) assert.ok(len >= MIN_CHUNK, `chunk ${i} is ${len}`)
  })
  const avg = data.length / lengths.length
  assert.ok(avg > 40 * 1024 && avg < 100 * 1024, `average ${avg}`)
})

test('cuts the same input the same way, however it is read', () => {
  const data = bytes(3 * 1024 * 1024, 'same')
  const whole = cutAll(data)
  for (const readSize of [1000, 65536, 300_000]) {
    const cuts: number[] = []
    let pos = 0
    chunkReader((buf, off, len) => {
      const n = Math.min(len, readSize, data.length - pos)
      buf.set(data.subarray(pos, pos + n), off)
      pos += n
      return n
    }, (chunk) => cuts.push(chunk.length), new Uint8Array(2 * MAX_CHUNK))
    assert.deepEqual(cuts, whole, `read size ${readSize}`)
  }
  assert.deepEqual(cutAll(data), whole)
})

test('a file smaller than the minimum is one chunk; zeros cut at the maximum', () => {
  assert.deepEqual(cutAll(new Uint8Array(MIN_CHUNK - 1)), [MIN_CHUNK - 1])
  assert.deepEqual(cutAll(new Uint8Array(0)), [])
  assert.deepEqual(cutAll(new Uint8Array(MAX_CHUNK * 2)), [MAX_CHUNK, MAX_CHUNK])
})

test('inserting bytes near the start leaves most later chunks unchanged', () => {
  const data = bytes(16 * 1024 * 1024, 'shift')
  const edited = new Uint8Array(data.length + 100)
  edited.set(data.subarray(0, 5000))
  edited.set(bytes(100, 'insert'), 5000)
  edited.set(data.subarray(5000), 5100)
  const digests = (buf: Uint8Array): string[] => {
    const out: string[] = []
    let pos = 0
    for (const len of cutAll(buf)) {
      out.push(createHash('sha256').update(buf.subarray(pos, pos + len)).digest('hex'))
      pos += len
    }
    return out
  }
  const before = new Set(digests(data))
  const after = digests(edited)
  const shared = after.filter((d) => before.has(d)).length
  const fraction = shared / after.length
  assert.ok(fraction >= 0.95, `only ${(fraction * 100).toFixed(1)}% of chunks survived the insertion`)
})
