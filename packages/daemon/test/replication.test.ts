import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { tempDir, until } from '@strata/testing'
import { bytes, connect, publishLayer, startDaemon } from './helpers.ts'
import { connectDaemon } from '../src/index.ts'
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'

test('a new layer is pulled by `replicas` other peers and status counts the copies', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t, { replicas: 1 })
  const c = await startDaemon(t, { replicas: 1 })
  await connect([a, b, c])
  const { layer } = await publishLayer(t, a, { 'r.bin': bytes('replicate', 500_000) })
  const deadline = Date.now() + 10_000
  const holders = async (): Promise<number> => Number(await b.store.has(layer.root)) + Number(await c.store.has(layer.root))
  while (await holders() < 1 && Date.now() < deadline) await delay(50)
  await delay(300)
  assert.equal(await holders(), 1, 'exactly one of the two other peers replicated it')
  const replica = (await b.store.has(layer.root)) ? b : c
  assert.equal(replica.counters.replicated, 1)
  let copies = 0
  while (copies < 2 && Date.now() < deadline) {
    copies = (await a.status()).layers.find((l) => l.root === layer.root.toString())?.copies ?? 0
    if (copies < 2) await delay(100)
  }
  assert.equal(copies, 2)
  // Providing the layer left provider records on the peers, and status counts them.
  const held = async (): Promise<number> => (await Promise.all([a, b, c].map(async (d) => (await d.status({ copies: false })).dht.providerRecords))).reduce((x, y) => x + y, 0)
  await until('provider records of the layer on the peers', async () => await held() >= 2, { timeoutMs: 30_000 })
})

test('copies count the peers that hold the layer, not a live peer that provides it without holding it', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  const c = await startDaemon(t)
  const d = await startDaemon(t)
  await connect([a, b, c, d])
  const { layer } = await publishLayer(t, a, { 'c.bin': bytes('copies', 300_000) })
  await b.fetchLayer(layer.root, { hints: [a.node.peerId] })
  // C's provider record outlives its copy, as after a fetch that failed or a removal.
  await c.node.contentRouting.provide(layer.root)
  const deadline = Date.now() + 30_000
  for (;;) {
    const found = new Set<string>()
    for await (const p of d.node.contentRouting.findProviders(layer.root, { signal: AbortSignal.timeout(2000) })) found.add(p.id.toString())
    if ([a, b, c].every((x) => found.has(x.peerId))) break
    if (Date.now() > deadline) throw new Error(`D finds ${found.size} providers of 3`)
    await delay(100)
  }
  assert.equal(await d.copies(layer.root), 2, 'A and B hold it; C, alive and listed, does not')
  assert.equal(await a.copies(layer.root), 2, 'A counts itself and B')
})

test('the metrics endpoint reports bytes exchanged, peers and hits', async (t) => {
  const a = await startDaemon(t, { metricsListen: '127.0.0.1:0' })
  const b = await startDaemon(t)
  await connect([a, b])
  const { key } = await publishLayer(t, a, { 'm.bin': bytes('metrics', 300_000) })
  await b.resolve(key)
  // What the runner reports through the control socket.
  const client = await connectDaemon(a.dataDir)
  assert.ok(client !== undefined)
  t.after(() => client.close())
  await client.report('local')
  await client.report('peer')
  await client.report('peer')
  await client.report('miss')
  const text = await new Promise<string>((resolve, reject) => {
    request({ host: '127.0.0.1', port: a.metricsPort, path: '/metrics' }, (res) => {
      let s = ''
      res.on('data', (c: Buffer) => { s += c.toString() })
      res.on('end', () => resolve(s))
    }).on('error', reject).end()
  })
  const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1])
  assert.ok(value('strata_bytes_to_peers_total') >= 300_000, text)
  assert.equal(value('strata_peers_connected'), 1)
  assert.equal(value('strata_blocks_rejected_total'), 0)
  assert.match(text, /^strata_hits_total\{source="local"\} 1$/m)
  assert.match(text, /^strata_hits_total\{source="peer"\} 2$/m)
  assert.doesNotMatch(text, /source="miss"/, 'a miss is not a hit of any source')
  assert.equal(value('strata_misses_total'), 1)
})

test('the producer stops mid-transfer while a replica exists: the fetch completes from the replica', async (t) => {
  const a = await startDaemon(t)
  const c = await startDaemon(t, { replicas: 2 })
  const b = await startDaemon(t)
  await connect([a, c, b])
  const { key, layer } = await publishLayer(t, a, { 'p.bin': bytes('producer-dies', 6 * 1024 * 1024) })
  const deadline = Date.now() + 10_000
  while (!(await c.store.has(layer.root)) && Date.now() < deadline) await delay(50)
  assert.ok(await c.store.has(layer.root), 'C replicated the layer')
  let stopping: Promise<void> | undefined
  const got = await b.resolve(key, {
    hints: [a.node.peerId, c.node.peerId],
    onProgress: (e) => { if (e.done > 0) stopping ??= a.stop() }
  })
  await stopping
  assert.ok(stopping !== undefined, 'A was stopped during the transfer')
  assert.equal(got.layer.root.toString(), layer.root.toString())
  assert.equal(got.layer.size, 6 * 1024 * 1024)
})

test('connectDaemon finds a running daemon, and nothing on a stale socket', async (t) => {
  const a = await startDaemon(t)
  const client = await connectDaemon(a.dataDir)
  assert.ok(client !== undefined)
  t.after(async () => { await client.close() })
  assert.equal((await client.status({ copies: false })).peerId, a.peerId)
  assert.equal(client.dataDir, a.dataDir)
  const { layer } = await publishLayer(t, a, { f: 'to remove' })
  assert.equal((await client.getLayer(layer.root))?.size, layer.size)
  await client.removeLayer(layer.root)
  assert.equal(await a.store.has(layer.root), false)
  const dir = tempDir(t)
  // A socket file nobody listens on, as a daemon killed with SIGKILL leaves it.
  const bound = spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(`${dir}/strata.sock`)})`])
  assert.equal(bound.status, 0)
  assert.ok(existsSync(`${dir}/strata.sock`))
  assert.equal(await connectDaemon(dir), undefined)
  assert.equal(await connectDaemon(`${dir}/nowhere`), undefined)
})

test('peers fetching the same layer at once serve each other what has landed', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  const c = await startDaemon(t)
  const d = await startDaemon(t)
  await connect([a, b, c, d])
  for (const x of [b, c, d]) {
    const deadline = Date.now() + 5000
    while (x.node.services.pubsub.getSubscribers('/strata/fetching/1').length < 3 && Date.now() < deadline) await delay(50)
  }
  const { layer } = await publishLayer(t, a, { 'fan.bin': bytes('fan-out', 6 * 1024 * 1024) })
  // A producer slower than the consumers (as one VM serving a fleet is): the
  // fetches overlap, so whether they share does not depend on this machine's speed.
  const store = a.store
  const getBlock = store.getBlock.bind(store)
  store.getBlock = async (cid, opts) => { await delay(15); return await getBlock(cid, opts) }
  const results = await Promise.all([b, c, d].map(async (x) => await x.fetchLayer(layer.root, { hints: [a.node.peerId] })))
  for (const r of results) assert.equal(r.layer.root.toString(), layer.root.toString())
  const served = b.exchange.counters.bytesToPeers + c.exchange.counters.bytesToPeers + d.exchange.counters.bytesToPeers
  const fromA = a.exchange.counters.bytesToPeers
  assert.ok(served > 0, `consumers served each other ${served} bytes; the producer ${fromA}`)
  assert.ok(fromA < 3 * 6 * 1024 * 1024, `the producer served ${fromA} bytes`)
})
