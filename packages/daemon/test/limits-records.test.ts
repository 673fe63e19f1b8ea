import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { lpStream } from '@libp2p/utils'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { loadIdentity, MAX_RECORD_SIZE, RECORD_FORMAT, RecordInvalidError, recordKey, signRecord, TrustPolicy, verifyEnvelope } from '@strata/records'
import { tempDir } from '@strata/testing'
import { RECORDS_PROTOCOL, RecordNotFoundError, encodeRecordRequest } from '../src/index.ts'
import { MAX_REQUEST_SIZE } from '../src/records.ts'
import { connect, startDaemon } from './helpers.ts'

// The record limits of doc/LIMITS.md: the size of a signed record, of a request on
// /strata/records/2.0.0, and of an answer to one.

test('record size: a signed record just under the limit verifies; one past it is refused as too-large', async (t) => {
  const identity = await loadIdentity(tempDir(t))
  const policy = new TrustPolicy(identity.peerId, undefined)
  const key = cidOf(DAG_CBOR, dagCbor.encode({ size: 1 }))
  // Three variables: each stays under the kernel's limit on one NAME=value, which records are held to as well.
  const sign = (envBytes: number): Uint8Array => signRecord({
    v: RECORD_FORMAT, key, parent: null, layer: key, size: 0, env: [0, 1, 2].map((i) => `BIG${i}=${'x'.repeat(Math.ceil(envBytes / 3))}`), created: 0, producer: identity.peerId, scope: 'main', epoch: 0, writer: null
  }, identity)
  const probe = sign(0).length
  const at = sign(MAX_RECORD_SIZE - probe - 32)
  assert.ok(at.length <= MAX_RECORD_SIZE && at.length > MAX_RECORD_SIZE - 64, `${at.length} bytes`)
  assert.equal(verifyEnvelope(at, policy, key).env.length, 3)
  const over = sign(MAX_RECORD_SIZE - probe + 16)
  assert.ok(over.length > MAX_RECORD_SIZE)
  assert.throws(() => verifyEnvelope(over, policy, key), (err: unknown) => err instanceof RecordInvalidError && err.reason === 'too-large')
})

test('a record request over its size limit resets the stream; a proper one is answered', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await b.node.dial(a.node.getMultiaddrs()[0]!)
  const key = cidOf(DAG_CBOR, dagCbor.encode({ req: 1 }))
  const big = await b.node.dialProtocol(a.node.peerId, RECORDS_PROTOCOL)
  const lp = lpStream(big)
  await lp.write(new Uint8Array(MAX_REQUEST_SIZE + 1)).catch(() => {})
  await assert.rejects(lp.read({ signal: AbortSignal.timeout(10_000) }))
  const ok = await b.node.dialProtocol(a.node.peerId, RECORDS_PROTOCOL)
  const lp2 = lpStream(ok)
  await lp2.write(encodeRecordRequest({ key, scopes: ['main'] }))
  assert.equal((await lp2.read({ signal: AbortSignal.timeout(10_000) })).byteLength, 0, 'an empty answer: no record in that scope')
})

test('an answer over the record size limit is refused: the lookup is a miss, nothing is stored', async (t) => {
  const liar = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([liar, b])
  await liar.node.unhandle(RECORDS_PROTOCOL)
  let asked = 0
  await liar.node.handle(RECORDS_PROTOCOL, (stream) => {
    asked++
    const lp = lpStream(stream)
    void lp.read().then(async () => { await lp.write(new Uint8Array(MAX_RECORD_SIZE + 1)) }).catch(() => {})
  })
  const key = cidOf(DAG_CBOR, dagCbor.encode({ huge: 1 }))
  await liar.node.contentRouting.provide(key)
  await assert.rejects(b.lookup(key, { scopes: ['default'] }), RecordNotFoundError)
  assert.ok(asked > 0, 'the liar was never asked')
  assert.equal(await b.store.getRecord(recordKey(key, 'default')), undefined)
})

test('record streams per connection: those past 8 are reset, the others wait for their request', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await b.node.dial(a.node.getMultiaddrs()[0]!)
  const conn = b.node.getConnections(a.node.peerId)[0]!
  ;(await conn.newStream(RECORDS_PROTOCOL)).abort(new Error('probe'))
  const results = await Promise.allSettled(Array.from({ length: 18 }, async () => await conn.newStream(RECORDS_PROTOCOL, { maxOutboundStreams: 1000 })))
  const streams = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  let closed = 0
  await new Promise<void>((resolve) => {
    const done = (): void => { if (++closed === streams.length - 8) resolve() }
    if (streams.length <= 8) resolve()
    for (const s of streams) {
      if (s.status !== 'open') done()
      else s.addEventListener('close', done, { once: true })
    }
  })
  assert.equal(streams.filter((s) => s.status === 'open').length, 8)
})
