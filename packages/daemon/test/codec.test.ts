import assert from 'node:assert/strict'
import { test } from 'node:test'
import { cidOf, DAG_CBOR, MAX_BLOCK_SIZE, RAW } from '@strata/chunker'
import {
  MAX_MESSAGE_SIZE, MAX_WANTS_PER_MESSAGE, MSG_WANT, ProtocolViolationError, decodeMessage, encodeBlockHeader, encodeDontHave, encodeWant
} from '../src/index.ts'

const cid = (s: string) => cidOf(RAW, Buffer.from(s))

test('a want-list round-trips', () => {
  const cids = [cid('a'), cidOf(DAG_CBOR, Buffer.from([0xa0])), cid('c')]
  const msg = decodeMessage(encodeWant(cids))
  assert.equal(msg.type, 'want')
  assert.deepEqual(msg.type === 'want' ? msg.cids.map(String) : [], cids.map(String))
})

test('a block and a dont-have round-trip', () => {
  const data = Buffer.from('block bytes')
  const c = cidOf(RAW, data)
  const block = decodeMessage(Buffer.concat([encodeBlockHeader(c), data]))
  assert.equal(block.type, 'block')
  if (block.type === 'block') {
    assert.ok(block.cid.equals(c))
    assert.deepEqual(Buffer.from(block.bytes), data)
  }
  const dh = decodeMessage(encodeDontHave(c))
  assert.equal(dh.type, 'dont-have')
})

test('the largest block fits in one message; anything larger is refused', () => {
  const c = cid('x')
  const header = encodeBlockHeader(c)
  const max = new Uint8Array(header.length + MAX_BLOCK_SIZE)
  max.set(header)
  assert.ok(max.length <= MAX_MESSAGE_SIZE)
  assert.equal(decodeMessage(max).type, 'block')
  const over = new Uint8Array(max.length + 1)
  over.set(header)
  assert.throws(() => decodeMessage(over), ProtocolViolationError)
  assert.throws(() => decodeMessage(new Uint8Array(MAX_MESSAGE_SIZE + 1)), ProtocolViolationError)
})

test('want-lists are bounded and never empty', () => {
  const many = Array.from({ length: MAX_WANTS_PER_MESSAGE + 1 }, (_, i) => cid(String(i)))
  assert.throws(() => encodeWant(many), TypeError)
  assert.throws(() => encodeWant([]), TypeError)
  const ok = encodeWant(many.slice(0, MAX_WANTS_PER_MESSAGE))
  const extra = encodeWant([many[MAX_WANTS_PER_MESSAGE]!])
  assert.throws(() => decodeMessage(Buffer.concat([ok, extra.subarray(1)])), /over 256/)
  assert.throws(() => decodeMessage(Uint8Array.of(MSG_WANT)), /empty/)
})

test('malformed messages are protocol violations, not crashes', () => {
  const bad = [
    new Uint8Array(0),
    Uint8Array.of(0x09),
    Uint8Array.of(MSG_WANT, 200, 1, 2),
    Uint8Array.of(MSG_WANT, 3, 0xff, 0xff, 0xff),
    Uint8Array.of(0x02, 0),
    Buffer.concat([encodeDontHave(cid('a')), Buffer.from([1])])
  ]
  for (const b of bad) assert.throws(() => decodeMessage(b), ProtocolViolationError)
})
