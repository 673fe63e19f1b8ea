import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { cidString } from '../src/cid.ts'

test('cidString gives the text of cid.toString() for CIDv1 of any codec and digest length', () => {
  fc.assert(fc.property(fc.constantFrom(0x55, 0x71), fc.uint8Array({ minLength: 0, maxLength: 64 }), (codec, digest) => {
    const cid = CID.createV1(codec, Digest.create(0x12, digest))
    assert.equal(cidString(cid), cid.toString())
  }), { numRuns: 500 })
  const v0 = CID.createV0(Digest.create(0x12, new Uint8Array(32).fill(1)))
  assert.equal(cidString(v0), v0.toString())
})

test('a kept cidString costs a flat string, not a rope of its characters', () => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const keep: string[] = []
  gc()
  const before = process.memoryUsage().heapUsed
  for (let i = 0; i < 20_000; i++) keep.push(cidString(CID.createV1(0x55, Digest.create(0x12, randomBytes(32)))))
  gc()
  const perString = (process.memoryUsage().heapUsed - before) / keep.length
  // A flat 59-character string is ~80 bytes plus the array slot; a rope of its characters ~1.5 KB.
  assert.ok(perString < 400, `${perString.toFixed(0)} bytes of heap per kept CID string`)
})
