import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { CID } from 'multiformats/cid'
import { openStore } from '@strata/store'
import { digestTree, memoryLogger, tempDir } from '@strata/testing'
import { RecordNotFoundError } from '../src/index.ts'
import { bytes, connect, publishLayer, startDaemon, wrapStore, writeFixedTree } from './helpers.ts'

test('a layer committed on A is restored on B byte-identically', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const tree = { 'big.bin': bytes('big', 3 * 1024 * 1024), small: 'hello', dir: { 'x.txt': 'x', 'y.bin': bytes('y', 200_000) } }
  const { key, layer } = await publishLayer(t, a, tree)
  const got = await b.resolve(key)
  assert.equal(got.layer.root.toString(), layer.root.toString())
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
  assert.equal(got.providers, 1)
  assert.ok(got.bytes > 3 * 1024 * 1024)
  assert.equal(a.exchange.counters.bytesToPeers, b.exchange.counters.bytesFromPeers)
  assert.ok((await b.store.getRecord(`runner/record/${key.toString()}/default`)) !== undefined, 'the record is stored on B')
})

test('a node that holds most blocks asks only for the missing ones', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const shared = bytes('shared', 4 * 1024 * 1024)
  const fresh = bytes('fresh', 100_000)
  const upper = `${tempDir(t)}/u`
  writeFixedTree(upper, { 'shared.bin': shared })
  await b.commit(upper)
  const { key } = await publishLayer(t, a, { 'shared.bin': shared, 'new.bin': fresh })
  const got = await b.resolve(key)
  assert.equal(got.layer.size, shared.length + fresh.length)
  const fromPeers = b.exchange.counters.bytesFromPeers
  // The new file plus the manifest blocks; none of the 4 MiB already here.
  assert.ok(fromPeers >= fresh.length, `got ${fromPeers} bytes`)
  assert.ok(fromPeers < fresh.length + 16 * 1024, `got ${fromPeers} bytes`)
  assert.equal(got.bytes, fromPeers)
})

test('a peer that serves corrupted bytes is banned and the fetch completes from another', async (t) => {
  const a = await startDaemon(t)
  const evilDir = tempDir(t)
  const real = await openStore({ dataDir: evilDir })
  t.after(async () => { await real.close() })
  const evilStore = wrapStore(real, {
    getBlock: async (cid, opts) => {
      const good = await real.getBlock(cid, opts)
      const bad = Uint8Array.from(good)
      bad[0] = (bad[0] ?? 0) ^ 0xff
      return bad
    }
  })
  const evil = await startDaemon(t, { dataDir: evilDir, store: evilStore })
  // Two wants at a time per provider, and A slow to answer: the corrupting peer is
  // asked for some of the blocks, however soon A's stream opens.
  const b = await startDaemon(t, { exchange: { wantBatch: 1, streamsPerProvider: 1 } })
  const getBlock = a.store.getBlock.bind(a.store)
  a.store.getBlock = async (cid, opts) => {
    if (cid.code === 0x55) await delay(20)
    return await getBlock(cid, opts)
  }
  await connect([a, evil, b])
  const tree = { 'big.bin': bytes('corrupt-test', 2 * 1024 * 1024) }
  const upper = `${tempDir(t)}/u`
  writeFixedTree(upper, tree)
  const onEvil = await evil.commit(upper)
  const { key, layer } = await publishLayer(t, a, tree)
  assert.equal(onEvil.root.toString(), layer.root.toString())
  const got = await b.resolve(key, { hints: [evil.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
  assert.ok(b.exchange.isBanned(evil.node.peerId), 'the corrupting peer is banned')
  assert.ok(b.exchange.counters.blocksRejected >= 1)
  assert.ok(!b.exchange.isBanned(a.node.peerId))
})

test('a record signed by an untrusted key is a miss with the reason logged', async (t) => {
  const a = await startDaemon(t)
  const other = await startDaemon(t)
  const { logger, lines } = memoryLogger()
  const b = await startDaemon(t, { trustedWriters: [other.peerId], logger })
  await connect([a, b])
  const { key } = await publishLayer(t, a, { f: 'untrusted' })
  await assert.rejects(b.resolve(key), (err: Error) => {
    assert.ok(err instanceof RecordNotFoundError)
    assert.match(err.reason, /not trusted/)
    return true
  })
  assert.ok(lines.some((l) => l.event === 'record-rejected' && l.reason === 'untrusted-signer' && l.key === key.toString()), 'the reason is logged')
  assert.equal(await b.store.has((await a.lookup(key)).record.layer), false)
})

test('a key nobody has is a miss once the connected peers have answered, not at the provider timeout', async (t) => {
  const a = await startDaemon(t)
  const { logger, lines } = memoryLogger()
  const b = await startDaemon(t, { logger })
  await connect([a, b])
  // A provides a layer and its record: the DHT holds something, only not this key.
  await publishLayer(t, a, { f: 'x' })
  const unknown = CID.parse('bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy')
  await assert.rejects(b.resolve(unknown), (err: Error) => err instanceof RecordNotFoundError && err.reason === 'none of the 1 peers asked has one')
  const lookups = lines.filter((l) => l.event === 'record-lookup-end' && l.key === unknown.toString())
  assert.deepEqual(lookups.map((l) => [l.connected, l.asked, l.found]), [[1, 1, false]], 'the one connected peer was asked and said no')
  // A DHT search, where one ran, ended by itself: none waited out its timeout.
  const searches = lines.filter((l) => l.event === 'provider-search-end' && l.cid === unknown.toString())
  assert.deepEqual(searches.filter((l) => l.end === 'timeout'), [], 'no search for the key ended at its timeout')
})

test('with allowPeers, a peer not on the list cannot connect', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  const c = await startDaemon(t, { allowPeers: [a.peerId] })
  await a.node.dial(c.node.getMultiaddrs()[0]!)
  // The gater refuses b once Noise has told c who it is; b may see the dial succeed first.
  await b.node.dial(c.node.getMultiaddrs()[0]!).catch(() => {})
  await assert.rejects(b.node.dialProtocol(c.node.peerId, '/strata/blocks/1.0.0', { signal: AbortSignal.timeout(3000) }))
  assert.deepEqual(c.node.getPeers().map(String), [a.peerId])
})
