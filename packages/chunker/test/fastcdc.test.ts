import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { chunkReader, cutAll, MAX_CHUNK, MIN_CHUNK } from '../src/fastcdc.ts'

/** Deterministic pseudo-random bytes (sha256 in counter mode). */
function bytes (n: number, seed: string): Uint8Array {
  const out = new Uint8Array(n)
  for (let off = 0, i = 0; off < n; off += 32, i++) {
    const block = createHash('sha256').update(seed).update(String(i)).digest()
    out.set(block.subarray(0, Math.min(32, n - off)), off)
  }
  return out
}

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
