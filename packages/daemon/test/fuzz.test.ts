import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR, MAX_BLOCK_SIZE, RAW } from '@strata/chunker'
import { loadIdentity, RECORD_FORMAT, RecordInvalidError, signRecord, TrustPolicy, verifyEnvelope } from '@strata/records'
import { tempDir } from '@strata/testing'
import { BLOCKS_PROTOCOL, decodeMessage, encodeBlockHeader, encodeDontHave, encodeWant, MAX_WANTS_PER_MESSAGE, ProtocolViolationError } from '../src/index.ts'
import { claimedKey, decodeRecordRequest } from '../src/records.ts'
import { bytes, startDaemon, varint, writeFixedTree } from './helpers.ts'

/**
 * Property tests over what a peer can send: block-exchange frames and signed
 * records. Only the package's own errors come out. FUZZ_RUNS raises the number of
 * cases (scripts/fuzz.ts).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 0) || undefined
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined
const params = (n: number): fc.Parameters<unknown> => ({ numRuns: RUNS ?? n, ...(SEED !== undefined ? { seed: SEED } : {}) })

function only (types: Array<new (...a: never[]) => Error>, fn: () => unknown): void {
  try {
    fn()
  } catch (err) {
    if (!types.some((T) => err instanceof T)) throw new Error(`untyped error: ${String(err)}`, { cause: err })
  }
}

const cid = fc.tuple(fc.constantFrom(RAW, DAG_CBOR), fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([codec, b]) => cidOf(codec, b))
/** A valid message, then (sometimes) a few bytes changed, cut off or appended. */
const message = fc.oneof(
  fc.array(cid, { minLength: 1, maxLength: MAX_WANTS_PER_MESSAGE }).map((c) => encodeWant(c)),
  fc.tuple(cid, fc.uint8Array({ maxLength: 4096 })).map(([c, b]) => Buffer.concat([encodeBlockHeader(c), b])),
  cid.map((c) => encodeDontHave(c))
)
const mutated = fc.tuple(message, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.option(fc.nat(), { nil: undefined }), fc.uint8Array({ maxLength: 8 }))
  .map(([m, flips, cut, tail]) => {
    const out = Buffer.concat([m, tail])
    for (const [at, v] of flips) if (out.length > 0) out[at % out.length] = v
    return cut !== undefined ? out.subarray(0, cut % (out.length + 1)) : out
  })

test('the block-exchange decoder throws only ProtocolViolationError, on random and on mutated frames', () => {
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 4096 }), mutated), (bytes) => {
    only([ProtocolViolationError], () => {
      const m = decodeMessage(bytes)
      // What decodes is within the limits.
      if (m.type === 'want') assert.ok(m.cids.length >= 1 && m.cids.length <= MAX_WANTS_PER_MESSAGE)
      if (m.type === 'block') assert.ok(m.bytes.length <= MAX_BLOCK_SIZE)
    })
  }), params(3000))
})

test('block-exchange messages round-trip', () => {
  fc.assert(fc.property(fc.array(cid, { minLength: 1, maxLength: MAX_WANTS_PER_MESSAGE }), cid, fc.uint8Array({ maxLength: 2048 }), (wants, c, b) => {
    const w = decodeMessage(encodeWant(wants))
    assert.deepEqual(w.type === 'want' ? w.cids.map(String) : [], wants.map(String))
    const blk = decodeMessage(Buffer.concat([encodeBlockHeader(c), b]))
    assert.ok(blk.type === 'block' && blk.cid.equals(c) && Buffer.from(blk.bytes).equals(Buffer.from(b)))
    const dh = decodeMessage(encodeDontHave(c))
    assert.ok(dh.type === 'dont-have' && dh.cid.equals(c))
  }), params(300))
})

test('the record decoder: random, mutated and re-signed envelopes give only typed refusals; a change never verifies', async (t) => {
  const identity = await loadIdentity(tempDir(t))
  const policy = new TrustPolicy(identity.peerId, [identity.peerId])
  const key = cidOf(DAG_CBOR, dagCbor.encode({ fuzz: 1 }))
  const record = { v: RECORD_FORMAT, key, parent: null, layer: cidOf(DAG_CBOR, dagCbor.encode({ layer: 1 })), size: 10, env: ['A=1'], created: 1, producer: identity.peerId, scope: 'main', epoch: 0, writer: null }
  const good = signRecord(record, identity)
  assert.equal(verifyEnvelope(good, policy, key).layer.toString(), record.layer.toString())
  const flipped = fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.option(fc.nat(), { nil: undefined })).map(([flips, cut]) => {
    const out = Buffer.from(good)
    for (const [at, v] of flips) out[at % out.length] = v
    return cut !== undefined ? out.subarray(0, cut % (out.length + 1)) : out
  })
  // Well-formed envelopes around bodies that are not records, or records with hostile fields.
  const field = fc.oneof(fc.integer(), fc.string({ maxLength: 8 }), fc.constant(null), fc.uint8Array({ maxLength: 8 }), fc.constant(key), fc.array(fc.oneof(fc.string({ maxLength: 4 }), fc.integer()), { maxLength: 3 }))
  const forged = fc.record({
    field: fc.constantFrom('v', 'key', 'parent', 'layer', 'size', 'env', 'created', 'producer', 'scope', 'epoch', 'writer', 'extra'),
    value: field,
    sig: fc.oneof(fc.constant(undefined), fc.uint8Array({ maxLength: 80 }))
  }).map(({ field: f, value, sig }) => {
    const body = dagCbor.encode({ ...record, [f]: value })
    return dagCbor.encode(sig === undefined ? { body } : { body, sig })
  })
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 512 }), flipped, forged), (bytes) => {
    if (Buffer.from(bytes).equals(Buffer.from(good))) return
    only([RecordInvalidError], () => {
      const r = verifyEnvelope(bytes, policy, key)
      // A byte change that still verifies must say exactly what was signed.
      assert.deepEqual(dagCbor.encode(r), dagCbor.encode(record))
    })
    only([RecordInvalidError], () => verifyEnvelope(bytes, policy))
    only([ProtocolViolationError], () => claimedKey(bytes))
    only([ProtocolViolationError], () => decodeRecordRequest(bytes))
  }), params(2000))
})

test('a record request with hostile scopes or keys is a ProtocolViolationError', () => {
  const key = cidOf(RAW, Uint8Array.of(1))
  fc.assert(fc.property(fc.array(fc.oneof(fc.string({ maxLength: 200 }), fc.integer(), fc.constantFrom('main', 'pr/1', '../x', '', 'a//b')), { maxLength: 40 }), fc.oneof(fc.constant<unknown>(key), fc.string(), fc.constant(null)), (scopes, k) => {
    only([ProtocolViolationError], () => {
      const req = decodeRecordRequest(dagCbor.encode({ key: k, scopes }))
      assert.ok(CID.asCID(req.key) !== null && req.scopes.length > 0)
    })
  }), params(1000))
})

test('random frames sent to a live daemon: every stream ends, answered or reset, and the daemon keeps serving', async (t) => {
  const a = await startDaemon(t, { exchange: { firstByteTimeoutMs: 1000, idleTimeoutMs: 1000 } })
  const upper = `${tempDir(t)}/upper`
  writeFixedTree(upper, { f: bytes('fuzz-live', 200_000) })
  const layer = await a.commit(upper)
  const b = await startDaemon(t)
  await b.node.dial(a.node.getMultiaddrs()[0]!)
  // Some frames want what the daemon has, so that BLOCK answers are part of it too.
  const wanted = fc.constantFrom(layer.root, cidOf(RAW, Uint8Array.of(1)))
  const frames = fc.array(fc.oneof(
    mutated.map((m) => Buffer.concat([varint(m.length), m])),
    fc.array(wanted, { minLength: 1, maxLength: 4 }).map((c) => { const m = encodeWant(c); return Buffer.concat([varint(m.length), m]) }),
    fc.uint8Array({ maxLength: 64 })
  ), { minLength: 1, maxLength: 4 })
  let answered = 0
  await fc.assert(fc.asyncProperty(frames, async (list) => {
    const stream = await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL)
    const ended = new Promise<void>((resolve) => { stream.addEventListener('close', () => resolve(), { once: true }) })
    stream.addEventListener('message', (evt) => { answered += evt.data.byteLength })
    try {
      for (const f of list) stream.send(f)
      await stream.close()
    } catch {
      // The daemon may reset the stream while we still write: that is one of the two outcomes.
    }
    await ended
  }), params(100))
  t.diagnostic(`${answered} bytes of answers`)
  // Still serving.
  const fresh = await startDaemon(t)
  await fresh.node.peerStore.merge(a.node.peerId, { multiaddrs: a.node.getMultiaddrs() })
  const got = await fresh.fetchLayer(layer.root, { hints: [a.node.peerId] })
  assert.equal(got.layer.size, 200_000)
})
