import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { EntryListWriter, readDagCbor, TYPE_CODES } from '../src/cbor.ts'
import { decodeEntryList } from '../src/manifest.ts'
import type { Entry } from '../src/entry.ts'
import { InvalidManifestError } from '../src/errors.ts'

// The entry shape of doc/FORMAT.md, encoded by the generic dag-cbor encoder: the
// writer must give exactly these bytes.
function reference (entries: Entry[]): Uint8Array {
  return dagCbor.encode({
    entries: entries.map((e) => {
      const o: Record<string, unknown> = { p: e.path, t: TYPE_CODES.indexOf(e.type), m: e.mode, u: e.uid, g: e.gid, mt: e.mtime }
      if (e.xattrs !== undefined && e.xattrs.length > 0) o.x = e.xattrs
      if (e.opaque === true) o.o = true
      if (e.type === 'file') o.s = e.size
      if (e.target !== undefined) o.l = e.target
      if (e.chunks !== undefined && e.chunks.length > 0) o.c = e.chunks.map((c) => [c.cid, c.length])
      if (e.data !== undefined) o.d = e.data
      if (e.rdev !== undefined) o.r = e.rdev
      return o
    })
  })
}

const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 })
// Around every CBOR length boundary (23/24, 255/256, 65535/65536, 2^32) and up to 2^48.
const uint = fc.oneof(
  fc.integer({ min: 0, max: 30 }), fc.integer({ min: 250, max: 260 }), fc.integer({ min: 65530, max: 65540 }),
  uint32, fc.integer({ min: 2 ** 32 - 2, max: 2 ** 32 + 2 }), fc.integer({ min: 0, max: 2 ** 48 })
)
const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 30 }), fc.string({ minLength: 20, maxLength: 300 }))
const bytes = fc.uint8Array({ maxLength: 300 })
const cid = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((d) => CID.createV1(0x55, Digest.create(0x12, d)))

const entry: fc.Arbitrary<Entry> = fc.record({
  path: text,
  type: fc.constantFrom(...TYPE_CODES),
  mode: fc.integer({ min: 0, max: 0o7777 }),
  uid: uint32,
  gid: uint32,
  mtime: fc.tuple(fc.integer({ min: -(2 ** 40), max: 2 ** 40 }), fc.integer({ min: 0, max: 999_999_999 })),
  size: uint,
  xattrs: fc.option(fc.array(fc.tuple(text, bytes), { maxLength: 3 }), { nil: undefined }),
  opaque: fc.option(fc.boolean(), { nil: undefined }),
  target: fc.option(text, { nil: undefined }),
  chunks: fc.option(fc.array(fc.record({ cid, length: uint }), { maxLength: 30 }), { nil: undefined }),
  data: fc.option(bytes, { nil: undefined }),
  rdev: fc.option(fc.tuple(uint32, uint32), { nil: undefined })
}, { requiredKeys: ['path', 'type', 'mode', 'uid', 'gid', 'mtime', 'size'] })

test('the entry-list writer gives the bytes of the generic dag-cbor encoder', () => {
  const w = new EntryListWriter()
  fc.assert(fc.property(fc.array(entry, { minLength: 1, maxLength: 40 }), (entries) => {
    for (const e of entries) w.add(e)
    assert.equal(w.count, entries.length)
    assert.deepEqual(Buffer.from(w.finish()), Buffer.from(reference(entries)))
    assert.equal(w.count, 0)
  }), { numRuns: 300 })
})

test('a block with thousands of entries and a long chunk list matches and reads back', () => {
  const w = new EntryListWriter()
  const chunk = { cid: CID.createV1(0x55, Digest.create(0x12, new Uint8Array(32).fill(7))), length: 65536 }
  const entries: Entry[] = []
  for (let i = 0; i < 5000; i++) {
    entries.push({ path: `d/f${String(i).padStart(5, '0')}`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [1_700_000_000 + i, i], size: 65536 * (i % 3), chunks: Array(i % 3).fill(chunk) as Entry['chunks'] })
  }
  entries.push({ path: 'd/big', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [0, 0], size: 65536 * 20000, chunks: Array(20000).fill(chunk) as Entry['chunks'] })
  for (const e of entries) w.add(e)
  const out = w.finish()
  assert.deepEqual(Buffer.from(out), Buffer.from(reference(entries)))
  assert.equal(decodeEntryList(out).length, entries.length)
})

test('values the format has no encoding for are refused, and the writer keeps what it had', () => {
  const good: Entry = { path: 'a', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1, 2], size: 0 }
  const bad: Entry[] = [
    { ...good, path: 'lone\ud800surrogate' },
    { ...good, uid: -1 },
    { ...good, mode: 1.5 },
    { ...good, mtime: [Number.NaN, 0] },
    { ...good, type: 'socket' as Entry['type'] }
  ]
  const w = new EntryListWriter()
  w.add(good)
  for (const e of bad) assert.throws(() => w.add(e), InvalidManifestError, JSON.stringify(e))
  assert.equal(w.count, 1)
  assert.deepEqual(Buffer.from(w.finish()), Buffer.from(reference([good])))
})

// Every kind of value dag-cbor has, CIDs included, except floats that are integers.
const dagValue = fc.letrec((tie) => ({
  v: fc.oneof({ depthSize: 'small' },
    fc.integer(), fc.maxSafeInteger(), fc.maxSafeNat().map((n) => -n), fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Number.isSafeInteger(d)),
    text, fc.boolean(), fc.constant(null), bytes, cid,
    fc.array(tie('v'), { maxLength: 5 }),
    fc.dictionary(text.filter((k) => k !== '__proto__'), tie('v'), { maxKeys: 6 }))
})).v

test('readDagCbor gives what the generic dag-cbor decoder gives', () => {
  fc.assert(fc.property(dagValue, (v) => {
    const encoded = dagCbor.encode(v)
    assert.deepStrictEqual(readDagCbor(encoded), dagCbor.decode(encoded))
  }), { numRuns: 500 })
})

test('readDagCbor takes only the one encoding of a value: whatever it reads encodes back to the same bytes', () => {
  let read = 0
  fc.assert(fc.property(dagValue, fc.nat(), fc.integer({ min: 0, max: 255 }), (v, at, byte) => {
    const bytes = Uint8Array.from(dagCbor.encode(v))
    bytes[at % bytes.length] = byte
    let got: unknown
    try {
      got = readDagCbor(bytes)
    } catch (err) {
      assert.ok(err instanceof InvalidManifestError, String(err))
      return
    }
    read++
    assert.deepEqual(Buffer.from(dagCbor.encode(got)), Buffer.from(bytes))
  }), { numRuns: 3000 })
  assert.ok(read > 300, `only ${read} mutated blocks read`)
})

test('readDagCbor refuses each other encoding of a value', () => {
  const h = (s: string): Uint8Array => Buffer.from(s.replaceAll(' ', ''), 'hex')
  const refused: Array<[string, string, RegExp]> = [
    ['1 in two bytes', '18 01', /shortest/],
    ['a length in a wider head than needed', '59 0001 61', /shortest/],
    ['map keys out of order', 'a2 6162 01 6161 02', /out of order/],
    ['a longer key before a shorter one', 'a2 626161 01 6162 02', /out of order/],
    ['a repeated key', 'a2 6161 01 6161 02', /out of order or repeated/],
    ['an indefinite-length array', '9f 01 ff', /indefinite/],
    ['an integer as a float', 'fb 3ff0000000000000', /integer encoded as a float/],
    ['a half-width float', 'f9 3e00', /does not allow/],
    ['undefined', 'f7', /does not allow/],
    ['a truncated UTF-8 sequence the size of one replacement character', '64 f09f9861', /UTF-8/],
    ['an encoded surrogate', '63 eda080', /UTF-8/],
    ['a tag other than 42', 'c1 01', /tag other than 42/],
    ['a CID without its 0x00 prefix', 'd82a 45 0155122000', /0x00/],
    ['a CIDv1 whose version byte says 0', 'd82a 5825 00 0055 1220' + '00'.repeat(32), /own encoding/],
    ['bytes after the value', '01 01', /after the value/],
    ['an integer past 2^53', '1b 0020000000000000', /past 2\^53/],
    ['a count larger than the block', '9a 7fffffff 01', /past the end/],
    ['a map key that is a number', 'a1 01 01', /not a string/]
  ]
  for (const [what, hex, message] of refused) {
    assert.throws(() => readDagCbor(h(hex)), (err: Error) => err instanceof InvalidManifestError && message.test(err.message), what)
  }
  // The same values in their one encoding read.
  assert.equal(readDagCbor(h('01')), 1)
  assert.deepEqual(readDagCbor(h('a2 6161 02 6162 01')), { a: 2, b: 1 })
  assert.equal(readDagCbor(h('64 f09f9880')), '\u{1F600}')
})
