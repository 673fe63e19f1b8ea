import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { LengthPrefixedStream } from '@libp2p/utils'
import type { CID } from 'multiformats/cid'
import { cidOf, RAW } from '@strata/chunker'
import { digestTree, memoryLogger } from '@strata/testing'
import { BLOCKS_PROTOCOL, decodeMessage, encodeWant, MAX_MESSAGE_SIZE } from '../src/index.ts'
import { bytes, connect, publishLayer, startDaemon } from './helpers.ts'

/**
 * Reads from a stream the server should reset: fails if an answer comes, and if the
 * read ends on its own bound instead (a server that only stays silent leaves the
 * stream open). Returns the `err` the server logged, past `lines[from]`, when it aborted the stream.
 */
async function assertServerReset (stream: Stream, lp: LengthPrefixedStream<Stream>, lines: Array<Record<string, unknown>>, from: number): Promise<{ code?: string }> {
  const bound = new Error('the server neither answered nor reset the stream')
  const ac = new AbortController()
  const timer = setTimeout(() => ac.abort(bound), 10_000)
  const err = await lp.read({ signal: ac.signal }).then(() => assert.fail('the server answered'), (e: unknown) => e)
  clearTimeout(timer)
  assert.notEqual(err, bound, 'the server stayed silent')
  assert.equal(stream.status, 'reset', 'the stream was not reset by the server')
  const aborted = lines.slice(from).filter((l) => l.event === 'block-stream-aborted')
  assert.equal(aborted.length, 1, 'the server logged no stream abort')
  return aborted[0]!.err as { code?: string }
}

test('a want-list over the outstanding limit gets the stream aborted; the server keeps serving', async (t) => {
  const { logger, lines } = memoryLogger()
  const a = await startDaemon(t, { exchange: { maxOutstandingWants: 4 }, logger })
  const b = await startDaemon(t)
  await connect([a, b])
  const { layer } = await publishLayer(t, a, { f: 'limits' })
  const tooMany = Array.from({ length: 5 }, (_, i) => cidOf(RAW, Buffer.from(String(i))))
  const stream = await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL)
  const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE })
  const from = lines.length
  await lp.write(encodeWant(tooMany))
  assert.equal((await assertServerReset(stream, lp, lines, from)).code, 'ERR_PEER_LIMIT')
  // Within the limit, the same peer is answered: a block it has, a dont-have for one it lacks.
  const ok = await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL)
  const lp2 = lpStream(ok, { maxDataLength: MAX_MESSAGE_SIZE })
  await lp2.write(encodeWant([layer.root, tooMany[0]!]))
  const answers = new Map<string, string>()
  for (let i = 0; i < 2; i++) {
    const m = decodeMessage((await lp2.read()).subarray())
    if (m.type === 'want') assert.fail('a server sent a want-list')
    answers.set(m.cid.toString(), m.type)
  }
  assert.deepEqual(answers, new Map([[layer.root.toString(), 'block'], [tooMany[0]!.toString(), 'dont-have']]))
})

test('a want-list is answered as its lookups finish: a slow block holds up none behind it', async (t) => {
  const gate = Promise.withResolvers<void>()
  t.after(() => gate.resolve())
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const { layer } = await publishLayer(t, a, { slow: bytes('slow', 30_000), fast: bytes('fast', 30_000) })
  const cids: Record<string, CID> = {}
  for await (const e of a.store.entries(layer.root)) if (e.chunks !== undefined) cids[e.path] = e.chunks[0]!.cid
  const slow = cids.slow!
  const fast = cids.fast!
  const getBlock = a.store.getBlock.bind(a.store)
  a.store.getBlock = async (cid, opts) => {
    if (cid.equals(slow)) await gate.promise
    return await getBlock(cid, opts)
  }
  const stream = await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL)
  const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE })
  await lp.write(encodeWant([slow, fast]))
  const first = decodeMessage((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())
  assert.ok(first.type === 'block' && first.cid.equals(fast), 'the ready block comes first')
  gate.resolve()
  const second = decodeMessage((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())
  assert.ok(second.type === 'block' && second.cid.equals(slow))
  assert.deepEqual(second.bytes, await getBlock(slow))
})

test('an oversized or malformed message aborts only its stream', async (t) => {
  const { logger, lines } = memoryLogger()
  const a = await startDaemon(t, { logger })
  const b = await startDaemon(t)
  await connect([a, b])
  const { key } = await publishLayer(t, a, { f: bytes('after-abuse', 100_000) })
  const cases: Array<[Uint8Array, string]> = [[Uint8Array.of(0x09, 1, 2, 3), 'ERR_PROTOCOL_VIOLATION'], [new Uint8Array(MAX_MESSAGE_SIZE + 10), 'ERR_MSG_DATA_TOO_LONG']]
  for (const [junk, code] of cases) {
    const stream = await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE + 100 })
    const from = lines.length
    await lp.write(junk).catch(() => {})
    assert.equal((await assertServerReset(stream, lp, lines, from)).code, code)
  }
  const got = await b.resolve(key)
  assert.equal(got.layer.size, 100_000)
})

test('a provider that never answers times out and the fetch completes from another, without a ban', async (t) => {
  const a = await startDaemon(t)
  const silent = await startDaemon(t)
  await silent.exchange.stop()
  // Reads the want-list and never answers.
  await silent.node.handle(BLOCKS_PROTOCOL, (stream) => {
    void (async () => {
      for await (const _ of stream) { /* swallow */ }
    })().catch(() => { /* the fetcher resets the stream when it gives up */ })
  })
  const b = await startDaemon(t, { exchange: { firstByteTimeoutMs: 500 } })
  await connect([a, silent, b])
  const { key, layer } = await publishLayer(t, a, { 'f.bin': bytes('silent', 1_500_000) })
  const t0 = performance.now()
  const got = await b.resolve(key, { hints: [silent.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
  assert.ok(performance.now() - t0 < 8000)
  assert.equal(b.exchange.isBanned(silent.node.peerId), false)
})
