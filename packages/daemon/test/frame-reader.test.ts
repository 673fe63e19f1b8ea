import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { FrameReader } from '../src/frame-reader.ts'
import { PeerLimitError } from '../src/index.ts'
import { connect, startDaemon, varint } from './helpers.ts'

const PROTOCOL = '/strata-test/frames/1.0.0'

/** A stream from b to a whose server side writes `chunks` (as given, so that messages straddle them) and closes. */
async function streamOf (t: Parameters<typeof startDaemon>[0], chunks: Uint8Array[]): Promise<Stream> {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  await a.node.handle(PROTOCOL, async (stream) => {
    for (const c of chunks) {
      if (!stream.send(c)) await stream.onDrain()
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    await stream.close()
  })
  return await b.node.dialProtocol(a.node.peerId, PROTOCOL)
}

function frame (n: number, fill: number): Uint8Array {
  return new Uint8ArrayList(varint(n), new Uint8Array(n).fill(fill)).subarray()
}

test('messages cut across chunks at every kind of place read back whole and in order, then the end', async (t) => {
  const sizes = [1, 200, 70_000, 3, 130_000, 127, 128, 16_384]
  const all = new Uint8ArrayList(...sizes.map((n, i) => frame(n, i + 1))).subarray()
  // Chunks that end inside a length prefix, inside a message and right on a boundary.
  const cuts = [1, 2, 150, 203, 204, 205, 70_210, 70_215, 200_000, all.length]
  const chunks = cuts.map((end, i) => all.subarray(i === 0 ? 0 : cuts[i - 1], end))
  const stream = await streamOf(t, chunks)
  const reader = new FrameReader(stream, { maxDataLength: 200_000, maxQueued: 1024 * 1024 })
  const signal = AbortSignal.timeout(10_000)
  for (const [i, n] of sizes.entries()) {
    const got = await reader.next(signal)
    assert.ok(got !== undefined, `message ${i} missing`)
    assert.equal(got.byteLength, n)
    assert.ok(got.subarray().every((b) => b === i + 1), `message ${i} has the wrong bytes`)
  }
  assert.equal(await reader.next(signal), undefined)
  reader.close()
})

test('a peer that sends more than is read gets its stream aborted, and the reader says why', async (t) => {
  const chunks = Array.from({ length: 8 }, (_, i) => frame(60_000, i))
  const stream = await streamOf(t, chunks)
  const reader = new FrameReader(stream, { maxDataLength: 100_000, maxQueued: 200_000 })
  // Nothing is read until the peer has sent everything.
  await new Promise((resolve) => setTimeout(resolve, 500))
  await assert.rejects(async () => { for (;;) if (await reader.next(AbortSignal.timeout(10_000)) === undefined) break }, PeerLimitError)
  assert.notEqual(stream.status, 'open')
})

test('a message longer than the limit is refused', async (t) => {
  const stream = await streamOf(t, [frame(5000, 1)])
  const reader = new FrameReader(stream, { maxDataLength: 4096, maxQueued: 1024 * 1024 })
  await assert.rejects(reader.next(AbortSignal.timeout(10_000)), /length/i)
})

test('an abort signal ends a wait for a message', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  await a.node.handle(PROTOCOL, () => {})
  const stream = await b.node.dialProtocol(a.node.peerId, PROTOCOL)
  const reader = new FrameReader(stream, { maxDataLength: 4096, maxQueued: 1024 * 1024 })
  await assert.rejects(reader.next(AbortSignal.timeout(200)), { name: 'TimeoutError' })
  stream.abort(new Error('done'))
})
