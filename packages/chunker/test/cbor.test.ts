import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { EntryListWriter, TYPE_CODES } from '../src/cbor.ts'
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
