import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect as tcpConnect } from 'node:net'
import type { Socket } from 'node:net'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection, Stream } from '@libp2p/interface'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { base32 } from 'multiformats/bases/base32'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { createNode, dhtStoreOf, NODE_LIMITS, PROTOCOL_PREFIX } from '../src/node.ts'
import type { NodeLimits, StrataNode } from '../src/node.ts'
import { tempDir, until } from '@strata/testing'
import { Key } from 'interface-datastore'

// The libp2p-level limits of doc/LIMITS.md, each crossed against a node built with
// a small value for it (and generous values for the others, so that one limit is
// crossed at a time).

const DHT = `${PROTOCOL_PREFIX}/lan/kad/1.0.0`

async function strataNode (t: TestContext, limits: Partial<NodeLimits>): Promise<StrataNode> {
  const node = await createNode({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, dhtDir: `${tempDir(t)}/dht`, limits: { inboundConnectionsPerSecond: 1000, ...limits } })
  await node.start()
  t.after(async () => { await node.stop() })
  return node
}

/** Dials `node` and opens one DHT stream, so that the node listens for streams (before that, yamux keeps at most 10 early ones). */
async function ready (client: Libp2p, node: StrataNode): Promise<Connection> {
  const conn = await client.dial(node.getMultiaddrs()[0]!)
  const first = await conn.newStream(DHT)
  first.abort(new Error('only a probe'))
  return conn
}

async function rawClient (t: TestContext): Promise<Libp2p> {
  const node = await createLibp2p({
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxOutboundStreams: 10_000 })]
  })
  t.after(async () => { await node.stop() })
  return node
}

/** A TCP socket to `node`, sending the first multistream-select line when `hello`. Resolves 'accepted' when the node answers, 'refused' when it hangs up. */
async function rawSocket (t: TestContext, node: StrataNode, opts: { hello: boolean, localAddress?: string }): Promise<{ socket: Socket, verdict: Promise<'accepted' | 'refused'> }> {
  const [, , host, , port] = node.getMultiaddrs()[0]!.toString().split('/')
  const socket = tcpConnect({ host, port: Number(port), localAddress: opts.localAddress })
  t.after(() => { socket.destroy() })
  socket.on('error', () => { /* a refused socket may be reset */ })
  const verdict = new Promise<'accepted' | 'refused'>((resolve) => {
    socket.once('data', () => resolve('accepted'))
    socket.once('close', () => resolve('refused'))
  })
  // A socket refused at once may be reset before it even reports 'connect'.
  if (await Promise.race([once(socket, 'connect').then(() => 'connected', () => 'refused'), verdict]) === 'refused') return { socket, verdict }
  if (opts.hello) socket.write(Buffer.concat([Buffer.of(19), Buffer.from('/multistream/1.0.0\n')]))
  return { socket, verdict }
}

/** Waits until `n` of `streams` have closed or been reset, and returns how many are still open. */
async function openAfterClosing (streams: Stream[], n: number): Promise<number> {
  let closed = 0
  await new Promise<void>((resolve) => {
    const done = (): void => { if (++closed === n) resolve() }
    if (n <= 0) resolve()
    for (const s of streams) {
      if (s.status !== 'open') done()
      else s.addEventListener('close', done, { once: true })
    }
  })
  return streams.filter((s) => s.status === 'open').length
}

test('connections: past the maximum, a new peer is refused; one leaving makes room', async (t) => {
  const server = await strataNode(t, { connections: 3 })
  const clients = await Promise.all(Array.from({ length: 4 }, async () => await rawClient(t)))
  for (const c of clients.slice(0, 3)) await c.dial(server.getMultiaddrs()[0]!)
  await assert.rejects(clients[3]!.dial(server.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) }))
  assert.equal(server.getConnections().length, 3)
  await clients[0]!.hangUp(server.peerId)
  await until('the server to drop a connection', () => server.getConnections().length < 3)
  await clients[3]!.dial(server.getMultiaddrs()[0]!)
})

test('pending inbound connections: sockets that never finish the handshake hold their slots, the next is refused', async (t) => {
  const pending = 4
  const server = await strataNode(t, { pendingInboundConnections: pending })
  const idle = []
  for (let i = 0; i < pending; i++) idle.push(await rawSocket(t, server, { hello: false }))
  const extra = await rawSocket(t, server, { hello: true })
  assert.equal(await extra.verdict, 'refused')
  // The idle ones were not closed to make room.
  for (const s of idle) assert.equal(s.socket.destroyed, false)
  // Once they go, the slots are free again.
  for (const s of idle) s.socket.destroy()
  let verdict: string = 'refused'
  await until('a connection to be accepted again', async () => (verdict = await (await rawSocket(t, server, { hello: true })).verdict) !== 'refused', { everyMs: 50 })
  assert.equal(verdict, 'accepted')
})

test('the handshake time: a socket that connects and says nothing is closed by the node', async (t) => {
  const server = await strataNode(t, { handshakeMs: 300 })
  const silent = await rawSocket(t, server, { hello: false })
  assert.equal(await silent.verdict, 'refused')
  // The slot it held is free again.
  assert.equal(await (await rawSocket(t, server, { hello: true })).verdict, 'accepted')
})

test('inbound connections per second from one host: a burst past the threshold is refused, another host is not', async (t) => {
  const server = await strataNode(t, { inboundConnectionsPerSecond: 2 })
  const burst = await Promise.all(Array.from({ length: 12 }, async () => await rawSocket(t, server, { hello: true, localAddress: '127.0.0.1' })))
  const verdicts = await Promise.all(burst.map(async (s) => await s.verdict))
  assert.ok(verdicts.filter((v) => v === 'refused').length > 0, 'no connection of the burst was refused')
  assert.ok(verdicts.filter((v) => v === 'accepted').length >= 2, verdicts.join(' '))
  assert.equal(await (await rawSocket(t, server, { hello: true, localAddress: '127.0.0.2' })).verdict, 'accepted')
})

test('streams per connection (yamux): streams past the limit are reset, the others stay open', async (t) => {
  const limit = 6
  const server = await strataNode(t, { streamsPerConnection: limit, dhtInboundStreams: 100 })
  const client = await rawClient(t)
  const conn = await ready(client, server)
  const results = await Promise.allSettled(Array.from({ length: 3 * limit }, async () => await conn.newStream(DHT, { maxOutboundStreams: 1000 })))
  const streams = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  // Identify may hold a stream of the budget for a moment: between limit - 1 and limit stay open.
  const open = await openAfterClosing(streams, streams.length - limit)
  assert.ok(open >= limit - 1 && open <= limit, `${open} streams open on one connection, limit ${limit}`)
  assert.equal(conn.status, 'open')
})

test('DHT streams per connection: those past the limit are reset', async (t) => {
  const limit = NODE_LIMITS.dhtInboundStreams
  const server = await strataNode(t, {})
  const client = await rawClient(t)
  const conn = await ready(client, server)
  const results = await Promise.allSettled(Array.from({ length: limit + 10 }, async () => await conn.newStream(DHT, { maxOutboundStreams: 1000 })))
  const streams = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  // Some are refused during negotiation, the rest reset just after it.
  assert.ok(streams.length >= limit, `only ${streams.length} streams negotiated: ${results.find((r) => r.status === 'rejected')?.reason as string}`)
  assert.equal(await openAfterClosing(streams, streams.length - limit), limit)
})

test('gossipsub streams per connection: those past the limit are reset', async (t) => {
  const limit = NODE_LIMITS.gossipStreams
  const server = await strataNode(t, {})
  const client = await rawClient(t)
  const conn = await ready(client, server)
  const results = await Promise.allSettled(Array.from({ length: limit + 6 }, async () => await conn.newStream('/meshsub/1.2.0', { maxOutboundStreams: 1000 })))
  const streams = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  assert.ok(streams.length >= limit, `only ${streams.length} streams negotiated`)
  assert.equal(await openAfterClosing(streams, streams.length - limit), limit)
})

test('a gossip frame over the limit is dropped; the receiver keeps its other peers', async (t) => {
  const topic = '/strata/records/1'
  const limit = 64 * 1024
  const receiver = await strataNode(t, { gossipMessageBytes: limit })
  const big = await strataNode(t, {})
  const small = await strataNode(t, {})
  const got: number[] = []
  receiver.services.pubsub.addEventListener('message', (evt) => { got.push(evt.detail.data.length) })
  for (const n of [receiver, big, small]) n.services.pubsub.subscribe(topic)
  await big.dial(receiver.getMultiaddrs()[0]!)
  await small.dial(receiver.getMultiaddrs()[0]!)
  await until('both nodes to subscribe', () => big.services.pubsub.getSubscribers(topic).length > 0 && small.services.pubsub.getSubscribers(topic).length > 0)
  await big.services.pubsub.publish(topic, new Uint8Array(limit + 1024).fill(1))
  await small.services.pubsub.publish(topic, new Uint8Array(100).fill(2))
  await until('the small message', () => got.includes(100))
  assert.deepEqual(got, [100])
})

test('DHT provider records: a peer announcing without end keeps only its newest, and the store never passes its total', async (t) => {
  const server = await strataNode(t, { dhtProviderRecords: 12, dhtProviderRecordsPerPeer: 5 })
  const store = dhtStoreOf(server)!
  const flooders = [await strataNode(t, {}), await strataNode(t, {})]
  for (const f of flooders) {
    await f.dial(server.getMultiaddrs()[0]!)
    await until('a routing table entry', () => (f.services.dht as unknown as { routingTable: { size: number } }).routingTable.size > 0)
  }
  const cids = async (tag: string, n: number): Promise<CID[]> => await Promise.all(Array.from({ length: n }, async (_, i) => CID.createV1(0x55, await sha256.digest(new TextEncoder().encode(`${tag}-${i}`)))))
  const [first, second] = [await cids('first', 20), await cids('second', 8)]
  const key = (c: CID): string => base32.baseEncode(c.multihash.bytes)
  // ADD_PROVIDER has no answer: provide() returns once it is sent, and the server stores it after.
  const arrived = async (c: CID, from: { peerId: { toString: () => string } }): Promise<void> => {
    const k = new Key(`/dht-strata/provider/${key(c)}/${from.peerId.toString()}`)
    await until(`the server to store ${key(c)}`, async () => await store.has(k))
  }
  for (const c of first) await flooders[0]!.contentRouting.provide(c)
  await arrived(first.at(-1)!, flooders[0]!)
  assert.deepEqual(store.providerStats, { records: 5, peers: 1 }, 'one peer keeps its newest 5')
  for (const c of second) await flooders[1]!.contentRouting.provide(c)
  await arrived(second.at(-1)!, flooders[1]!)
  assert.ok(store.providerStats.records <= 12, `${store.providerStats.records} provider records`)
  assert.equal(store.providerStats.peers, 2)
  assert.ok(store.counters.providersDropped >= 20 + 8 - 12)
  // What is kept is each peer's newest.
  const held = new Set<string>()
  for await (const k of store.queryKeys({ prefix: '/dht-strata/provider/' })) held.add(k.toString().split('/').at(-2)!)
  assert.ok(held.has(key(second.at(-1)!)), 'the newest record is kept')
  assert.ok(!held.has(key(first[0]!)), 'the flooder\'s oldest record is gone')
  // Each value owns its memory: a few bytes of a shared buffer kept the whole buffer for 48 h.
  for await (const { value } of store.query({ prefix: '/dht-strata/provider/' })) assert.equal(value.buffer.byteLength, value.byteLength)
})

test('the DHT store keeps a copy of each value, never a view into a larger buffer', async (t) => {
  const { BoundedDhtStore } = await import('../src/dht-store.ts')
  const { ClassicLevel } = await import('classic-level')
  const db = new ClassicLevel<string, string>(`${tempDir(t)}/dht`, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  t.after(async () => { await db.close() })
  const store = await BoundedDhtStore.open('/dht-strata', db)
  // A provider record's value is a varint time, as kad-dht writes it.
  const shared = new Uint8Array(64 * 1024).fill(7)
  shared.set([0xe8, 0x07], 100)
  for (const k of ['/dht-strata/provider/m/p', '/dht-strata/record/r', '/peers/x']) {
    await store.put(new Key(k), shared.subarray(100, 102))
    const got = await store.get(new Key(k))
    assert.deepEqual(got, new Uint8Array([0xe8, 0x07]))
    assert.equal(got.buffer.byteLength, 2, `${k} holds the 64 KiB buffer it was cut from`)
  }
})
