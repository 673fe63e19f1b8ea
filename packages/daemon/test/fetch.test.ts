import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import type { CID } from 'multiformats/cid'
import { digestTree, tempDir, until } from '@strata/testing'
import type { PlainTree as Tree } from '@strata/testing'
import { BlockUnavailableError } from '../src/index.ts'
import { FETCHING_TOPIC } from '../src/records.ts'
import type { Daemon } from '../src/index.ts'
import { bytes, connect, publishLayer, startDaemon, writeFixedTree } from './helpers.ts'

/** `n` files of 20 KB, one block each, named so that manifest order is file order. */
function manyFiles (seed: string, n: number): Tree {
  const tree: Tree = {}
  for (let i = 0; i < n; i++) tree[`f${String(i).padStart(4, '0')}`] = bytes(`${seed}-${i}`, 20_000)
  return tree
}

/** Counts the streams `d` opens, per peer, from now on. */
function countDials (d: Daemon): Map<string, number> {
  const dials = new Map<string, number>()
  const dialProtocol = d.node.dialProtocol.bind(d.node)
  d.node.dialProtocol = (async (peer: Parameters<typeof dialProtocol>[0], ...rest: unknown[]) => {
    const k = peer.toString()
    dials.set(k, (dials.get(k) ?? 0) + 1)
    return await (dialProtocol as (...args: unknown[]) => Promise<unknown>)(peer, ...rest)
  }) as typeof dialProtocol
  return dials
}

/** The content block CIDs of a committed layer, in manifest order. */
async function contentBlocks (d: Daemon, root: CID): Promise<CID[]> {
  const out: CID[] = []
  for await (const e of d.store.entries(root)) for (const c of e.chunks ?? []) out.push(c.cid)
  return out
}

test('a peer still fetching a layer serves the blocks that have landed to a peer sharing the fetch, and waits a moment for one on its way', async (t) => {
  // Opened before the daemons stop (after-hooks run in order), so that none waits on it.
  const gate = Promise.withResolvers<void>()
  t.after(() => gate.resolve())
  const a = await startDaemon(t)
  // One CID per want-list: A answers the free file without waiting for the gated ones.
  // A gated want must outlast the test's steps however slow the machine: B waits for A's first byte as long as the test may run.
  const b = await startDaemon(t, { exchange: { landingWaitMs: 5000, wantBatch: 1, firstByteTimeoutMs: 120_000, idleTimeoutMs: 120_000 } })
  const c = await startDaemon(t)
  await connect([a, b, c])
  const { layer } = await publishLayer(t, a, manyFiles('partial', 20))
  // A serves the first file block it is asked for at once and holds the others until
  // the gate opens. (B asks in no fixed order: its restore's workers race.)
  const getBlock = a.store.getBlock.bind(a.store)
  const asked: CID[] = []
  a.store.getBlock = async (cid, opts) => {
    if (cid.code === 0x55) {
      if (!asked.some((c) => c.equals(cid))) asked.push(cid)
      if (!asked[0]!.equals(cid)) await gate.promise
    }
    return await getBlock(cid, opts)
  }
  // C announces that it fetches the layer too, as every fetcher does: B keeps what
  // lands for it (a fetch nobody shares keeps nothing).
  await until('B to see C on the fetching topic', () => b.node.services.pubsub.getSubscribers(FETCHING_TOPIC).some((p) => p.equals(c.node.peerId)))
  await c.node.services.pubsub.publish(FETCHING_TOPIC, layer.root.bytes)
  await delay(300)
  const fetching = b.fetchLayer(layer.root, { hints: [a.node.peerId] })
  // Should it fail early, the test fails on its error, not on an unhandled rejection.
  let failed: unknown
  fetching.catch((err: unknown) => { failed = err })
  // The manifest's root, entry list and times block, and one file; another file asked for and held.
  await until('B to fetch the manifest and a file', () => {
    if (failed !== undefined) throw failed
    return b.exchange.counters.blocksFromPeers >= 1 + 2 + 1 && asked.length >= 2
  })
  assert.equal(await b.store.has(layer.root), false, 'B has not finished')

  // C asks B alone: the landed block comes back; a block B is still waiting for comes once A lets it go.
  const source = c.exchange.source([b.node.peerId])
  t.after(() => source.close())
  const [landed, held] = asked as [CID, CID]
  // Compared as bytes: a block cut out of one chunk is a Buffer, one joined from several a Uint8Array.
  assert.deepEqual(Buffer.from(await source.getBlock(landed)), Buffer.from(await getBlock(landed)))
  const later = source.getBlock(held)
  await delay(200)
  gate.resolve()
  assert.deepEqual(Buffer.from(await later), Buffer.from(await getBlock(held)))
  assert.ok(b.exchange.counters.blocksToPeers >= 2)
  const got = await fetching
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
})

test('a block no peer has fails with ERR_BLOCK_UNAVAILABLE once a peer still fetching has waited for it', async (t) => {
  const gate = Promise.withResolvers<void>()
  t.after(() => gate.resolve())
  const a = await startDaemon(t)
  const b = await startDaemon(t, { exchange: { landingWaitMs: 100, firstByteTimeoutMs: 120_000, idleTimeoutMs: 120_000 } })
  const c = await startDaemon(t)
  await connect([a, b, c])
  const { layer } = await publishLayer(t, a, manyFiles('stuck', 4))
  const blocks = await contentBlocks(a, layer.root)
  const getBlock = a.store.getBlock.bind(a.store)
  a.store.getBlock = async (cid, opts) => {
    if (cid.code === 0x55) await gate.promise
    return await getBlock(cid, opts)
  }
  const fetching = b.fetchLayer(layer.root, { hints: [a.node.peerId] })
  fetching.catch(() => {})
  await until('B to fetch its first blocks', () => b.exchange.counters.blocksFromPeers >= 2)
  const source = c.exchange.source([b.node.peerId])
  t.after(() => source.close())
  await assert.rejects(source.getBlock(blocks[0]!), (err: Error) => err instanceof BlockUnavailableError)
  gate.resolve()
  await fetching
})

test('a provider that holds none of the layer is dropped after a few DONT_HAVEs, not asked for every block', async (t) => {
  const a = await startDaemon(t)
  const empty = await startDaemon(t)
  const b = await startDaemon(t, { exchange: { wantBatch: 8, streamsPerProvider: 1 } })
  await connect([a, empty, b])
  const n = 400
  const { layer } = await publishLayer(t, a, manyFiles('dont-have', n))
  const source = b.exchange.source([empty.node.peerId, a.node.peerId])
  t.after(() => source.close())
  const got = await b.store.restore(layer.root, source, { untrusted: true })
  assert.deepEqual(digestTree(got.path), digestTree(layer.path))
  const stats = new Map(source.providerStats.map((s) => [s.peer, s]))
  const e = stats.get(empty.peerId)!
  assert.equal(e.dropped, true)
  assert.equal(e.blocks, 0)
  // Dropped after 64 DONT_HAVEs, with at most one stream's window (2 x 8) more on the way.
  assert.ok(e.dontHaves <= 64 + 16, `the empty provider was asked ${e.dontHaves} times for ${n} blocks`)
  assert.ok(stats.get(a.peerId)!.blocks >= n)
})

test('a fetch from a slow and a fast provider completes, the fast one carrying most of it', async (t) => {
  const a = await startDaemon(t)
  const slowDir = tempDir(t)
  const slow = await startDaemon(t, { dataDir: slowDir })
  const b = await startDaemon(t, { exchange: { wantBatch: 8 } })
  await connect([a, slow, b])
  const tree = manyFiles('slow', 200)
  const upper = `${tempDir(t)}/u`
  writeFixedTree(upper, tree)
  await slow.commit(upper)
  const { layer } = await publishLayer(t, a, tree)
  const getBlock = slow.store.getBlock.bind(slow.store)
  slow.store.getBlock = async (cid, opts) => {
    await delay(100)
    return await getBlock(cid, opts)
  }
  const source = b.exchange.source([slow.node.peerId, a.node.peerId])
  t.after(() => source.close())
  const got = await b.store.restore(layer.root, source, { untrusted: true })
  assert.deepEqual(digestTree(got.path), digestTree(layer.path))
  const stats = new Map(source.providerStats.map((s) => [s.peer, s]))
  assert.ok(stats.get(a.peerId)!.blocks > stats.get(slow.peerId)!.blocks, JSON.stringify(source.providerStats))
  assert.equal(b.exchange.isBanned(slow.node.peerId), false)
})

test('a peer sharing the fetch that goes away is dialled a few times, not in a loop, and its blocks come from the full provider', { timeout: 90_000 }, async (t) => {
  const a = await startDaemon(t)
  const sharer = await startDaemon(t)
  const b = await startDaemon(t, { exchange: { wantBatch: 8 } })
  await connect([a, sharer, b])
  const tree = manyFiles('sharer-gone', 120)
  const { layer } = await publishLayer(t, a, tree)
  // The sharer holds the layer too, as a peer that has fetched most of it would.
  const upper = `${tempDir(t)}/u`
  writeFixedTree(upper, tree)
  await sharer.commit(upper)
  const blocks = await contentBlocks(a, layer.root)
  const dials = countDials(b)
  const source = b.exchange.source([a.node.peerId], { self: b.node.peerId })
  t.after(() => source.close())
  source.addProvider(sharer.node.peerId)
  const expect = async (list: CID[]): Promise<void> => {
    const want = await Promise.all(list.map(async (c) => await a.store.getBlock(c)))
    let timer: NodeJS.Timeout | undefined
    const stuck = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the fetch is stuck')), 20_000) })
    try {
      const got = await Promise.race([Promise.all(list.map(async (c) => await source.getBlock(c))), stuck])
      assert.ok(got.every((g, i) => Buffer.from(g).equals(want[i]!)), 'every block as the provider holds it')
    } finally {
      clearTimeout(timer)
    }
  }

  await expect(blocks.slice(0, 60))
  const served = source.providerStats.find((s) => s.peer === sharer.peerId)!.blocks
  assert.ok(served > 0, 'the sharer served the blocks it owns')
  await sharer.stop()
  dials.clear()
  await expect(blocks.slice(60))
  // A session per stream slot at most: once one has failed, the full provider is asked for the sharer's blocks.
  assert.ok((dials.get(sharer.peerId) ?? 0) <= 4, `the gone sharer was dialled ${dials.get(sharer.peerId)} times`)
  assert.ok(source.providerStats.find((s) => s.peer === a.peerId)!.blocks >= blocks.length - served)
})

test('a restore keeps its sessions through lulls between bursts of wants: few streams are opened', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t, { exchange: { wantBatch: 8 } })
  await connect([a, b])
  const { layer } = await publishLayer(t, a, manyFiles('lulls', 300))
  const dials = countDials(b)
  const source = b.exchange.source([a.node.peerId])
  t.after(() => source.close())
  // Wants in bursts, with a pause between them, as a restore reading ahead makes them.
  const blocks = await contentBlocks(a, layer.root)
  for (let i = 0; i < blocks.length; i += 50) {
    await Promise.all(blocks.slice(i, i + 50).map(async (c) => await source.getBlock(c)))
    await delay(100)
  }
  const opened = dials.get(a.peerId) ?? 0
  assert.ok(opened <= 4, `${opened} streams opened for ${blocks.length} blocks in ${Math.ceil(blocks.length / 50)} bursts`)
})

test('8 daemons: when every provider a fetch started with is dead, it searches again and completes from the one live holder', { timeout: 120_000 }, async (t) => {
  const daemons: Daemon[] = []
  for (let i = 0; i < 7; i++) daemons.push(await startDaemon(t))
  await connect(daemons)
  const [producer, holder, gone1, gone2, ...bystanders] = daemons as [Daemon, Daemon, Daemon, Daemon, ...Daemon[]]
  const { layer } = await publishLayer(t, producer, manyFiles('churn', 40))
  for (const d of [holder, gone1, gone2]) await d.fetchLayer(layer.root, { hints: [producer.node.peerId] })
  // The consumer joins after those fetches (it never heard them announced), and takes
  // one provider at first: the producer its record names, as a search cut short under
  // load, or a DHT that lists dead providers first, gave it.
  const consumer = await startDaemon(t, { maxProviders: 1 })
  for (const b of bystanders) {
    await consumer.node.dial(b.node.getMultiaddrs()[0]!)
    await delay(250)
  }
  // The four provider records are found from the consumer.
  const deadline = Date.now() + 60_000
  for (;;) {
    const found = new Set<string>()
    try {
      for await (const p of consumer.node.contentRouting.findProviders(layer.root, { signal: AbortSignal.timeout(2000) })) found.add(p.id.toString())
    } catch (err) {
      // A search cut off by its 2 s (a loaded machine) is tried again, until the deadline.
      if ((err as Error).name !== 'AbortError' && (err as Error).name !== 'TimeoutError') throw err
    }
    if (found.size >= 4) break
    if (Date.now() > deadline) throw new Error(`the consumer finds ${found.size} providers of 4`)
    await delay(200)
  }
  for (const d of [producer, gone1, gone2]) await d.stop()

  const got = await consumer.fetchLayer(layer.root, { hints: [producer.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
  assert.equal(got.providers, 1, 'the live holder sent the layer')
  assert.ok(holder.exchange.counters.blocksToPeers > 0)
})

test('6 consumers fetching a layer at once get each block once, and the producer sends each block about once', { timeout: 180_000 }, async (t) => {
  const producer = await startDaemon(t)
  const consumers: Daemon[] = []
  for (let i = 0; i < 6; i++) consumers.push(await startDaemon(t))
  await connect([producer, ...consumers])
  // Small files of one block each, and a large one cut into many.
  const tree = manyFiles('fan-out', 600)
  tree.large = bytes('fan-out-large', 6_000_000)
  const { layer } = await publishLayer(t, producer, tree)
  const got = await Promise.all(consumers.map(async (c) => await c.fetchLayer(layer.root, { hints: [producer.node.peerId] })))
  // Content blocks and manifest blocks alike, each once but for a few counted as
  // received again: one a peer asked for after this node had it and no longer held it.
  const once = consumers.map((c) => c.exchange.counters.blocksFromPeers - c.exchange.counters.blocksDuplicate)
  const blocks = once[0]!
  assert.ok(blocks > (await contentBlocks(producer, layer.root)).length, `${blocks} blocks`)
  for (const [i, c] of consumers.entries()) {
    assert.deepEqual(digestTree(got[i]!.layer.path), digestTree(layer.path))
    assert.equal(once[i], blocks, `consumer ${i} received ${once[i]} distinct blocks of ${blocks}`)
    assert.ok(c.exchange.counters.blocksDuplicate <= blocks / 50, `consumer ${i} received ${c.exchange.counters.blocksDuplicate} blocks twice`)
  }
  // The consumers split the layer and serve each other its blocks: each crosses the
  // producer's link once, but for those a consumer asks before it hears that the others
  // fetch it too (the manifest's first blocks). An owner that answered DONT_HAVE for a
  // block its restore had not reached yet had the producer send that block twice or more.
  const sent = producer.exchange.counters.blocksToPeers
  assert.ok(sent <= 1.25 * blocks, `the producer sent ${sent} blocks for a layer of ${blocks}`)
  for (const [i, c] of consumers.entries()) assert.ok(c.exchange.counters.blocksToPeers > 0, `consumer ${i} served no other`)
})
