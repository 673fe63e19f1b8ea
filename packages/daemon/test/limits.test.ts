import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import type { Connection, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import { digestTree, tempDir, until } from '@strata/testing'
import type { PlainTree as Tree } from '@strata/testing'
import { BlockUnavailableError, BLOCKS_PROTOCOL, createDaemon, encodeWant, MAX_WANTS_PER_MESSAGE } from '../src/index.ts'
import type { Daemon } from '../src/index.ts'
import { NODE_LIMITS, PROTOCOL_PREFIX } from '../src/node.ts'
import { RateLimiter } from '../src/rate.ts'
import { BlockExchange } from '../src/exchange.ts'
import { MAX_BANS } from '../src/bans.ts'
import { SERVE_READ_BUFFER } from '../src/server.ts'
import { bytes, startDaemon, varint, writeFixedTree } from './helpers.ts'

/** A bare libp2p node that speaks no strata protocol of its own: the hostile peer. */
async function rawClient (t: TestContext): Promise<Libp2p> {
  const node = await createLibp2p({
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxOutboundStreams: 20_000, streamOptions: { maxReadBufferLength: 256 * 1024 * 1024 } })]
  })
  t.after(async () => { await node.stop() })
  return node
}

async function dialRaw (client: Libp2p, d: Daemon, opts: { force?: boolean } = {}): Promise<Connection> {
  return await client.dial(multiaddr(d.addresses[0]!), { force: opts.force, signal: AbortSignal.timeout(10_000) })
}

/** Resolves when the stream ends, with the error it ended on (undefined when closed cleanly). */
async function ended (stream: Stream): Promise<Error | undefined> {
  if (stream.status === 'aborted' || stream.status === 'reset' || stream.status === 'closed') return new Error(stream.status)
  const [evt] = await once(stream, 'close') as [{ error?: Error }]
  return evt.error
}

async function commitTree (t: TestContext, d: Daemon, tree: Tree): Promise<CID> {
  const dir = `${tempDir(t)}/upper`
  writeFixedTree(dir, tree)
  return (await d.commit(dir)).root
}

/** B fetches `root` from A alone (no DHT needed), and gets the same tree. */
async function fetchFrom (b: Daemon, a: Daemon | { peerId: string, addresses: string[] }, root: CID): Promise<string> {
  const peer = peerIdFromString(a.peerId)
  await b.node.peerStore.merge(peer, { multiaddrs: a.addresses.map((x) => multiaddr(x)) })
  const got = await b.fetchLayer(root, { hints: [peer], signal: AbortSignal.timeout(60_000) })
  return got.layer.path
}

test('a length prefix claiming 4 GiB resets the block stream; the daemon serves another peer', async (t) => {
  const a = await startDaemon(t)
  const root = await commitTree(t, a, { f: bytes('after-4gib', 300_000) })
  const client = await rawClient(t)
  const conn = await dialRaw(client, a)
  const stream = await conn.newStream(BLOCKS_PROTOCOL)
  stream.send(varint(4 * 2 ** 30))
  stream.send(new Uint8Array(64 * 1024))
  assert.ok(await ended(stream), 'the stream ended without an error')
  const b = await startDaemon(t)
  const path = await fetchFrom(b, a, root)
  assert.deepEqual(digestTree(path), digestTree((await a.store.getLayer(root))!.path))
})

test('a DHT message past the 4 MiB read buffer resets the DHT stream; the node keeps serving blocks', async (t) => {
  const a = await startDaemon(t)
  const root = await commitTree(t, a, { f: bytes('after-dht', 100_000) })
  const client = await rawClient(t)
  const conn = await dialRaw(client, a)
  const stream = await conn.newStream(`${PROTOCOL_PREFIX}/lan/kad/1.0.0`)
  stream.send(varint(64 * 1024 * 1024))
  const junk = new Uint8Array(256 * 1024)
  let sent = 0
  const end = ended(stream)
  while (sent < NODE_LIMITS.streamReadBuffer + 1024 * 1024 && stream.status === 'open') {
    if (!stream.send(junk)) await Promise.race([once(stream, 'drain'), end])
    sent += junk.length
  }
  assert.ok(await end, 'the DHT stream ended without an error')
  const b = await startDaemon(t)
  await fetchFrom(b, a, root)
})

test('want-lists pushed far ahead of the answers: past the serving read buffer the stream is reset', async (t) => {
  const a = await startDaemon(t)
  const client = await rawClient(t)
  const conn = await dialRaw(client, a)
  const stream = await conn.newStream(BLOCKS_PROTOCOL)
  const end = ended(stream)
  let answered = 0
  stream.addEventListener('message', (evt) => { answered += evt.data.byteLength })
  const want = encodeWant(Array.from({ length: MAX_WANTS_PER_MESSAGE }, (_, i) => CID.decode(Uint8Array.of(0x01, 0x55, 0x12, 0x20, ...randomBytes(31), i))))
  const framed = Buffer.concat([varint(want.length), want])
  const frames = Math.ceil(2 * SERVE_READ_BUFFER / framed.length)
  // Everything at once: twice what the serving side buffers unread.
  stream.send(Buffer.concat(Array.from({ length: frames }, () => framed)))
  assert.ok(await end, 'the stream ended without an error')
  // A DONT_HAVE is 39 bytes framed: the daemon gave up long before answering them all.
  const all = frames * MAX_WANTS_PER_MESSAGE * 39
  assert.ok(answered < all / 2, `${answered} of ${all} answer bytes arrived`)
})

test('a client that stalls after the first byte of a want-list is cut off at the first-byte timeout', async (t) => {
  const a = await startDaemon(t, { exchange: { firstByteTimeoutMs: 300 } })
  const client = await rawClient(t)
  const conn = await dialRaw(client, a)
  const stream = await conn.newStream(BLOCKS_PROTOCOL)
  stream.send(varint(1 + 37))
  stream.send(Uint8Array.of(0x01))
  assert.ok(await ended(stream), 'the server did not reset the stalled stream')
})

/** A provider that answers each want-list with the first bytes of a frame, then nothing. */
async function stallingProvider (t: TestContext): Promise<Daemon> {
  const d = await startDaemon(t)
  await d.exchange.stop()
  await d.node.handle(BLOCKS_PROTOCOL, (stream) => {
    stream.addEventListener('message', () => { stream.send(varint(1000)); stream.send(Uint8Array.of(0x02, 36)) }, { once: true })
  })
  return d
}

test('a provider that stalls after the first byte: the fetch goes to another provider', async (t) => {
  const a = await startDaemon(t)
  const staller = await stallingProvider(t)
  const tree = { 'f.bin': bytes('stall', 1_200_000) }
  const root = await commitTree(t, a, tree)
  await commitTree(t, staller, tree)
  const b = await startDaemon(t, { exchange: { firstByteTimeoutMs: 2000 } })
  for (const d of [a, staller]) await b.node.peerStore.merge(d.node.peerId, { multiaddrs: d.node.getMultiaddrs() })
  const got = await b.fetchLayer(root, { hints: [staller.node.peerId, a.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree((await a.store.getLayer(root))!.path))
  assert.equal(b.exchange.isBanned(staller.node.peerId), false, 'a slow peer is not a lying peer')
})

test('a provider that stalls after the first byte, and no other: the fetch fails cleanly', async (t) => {
  const staller = await stallingProvider(t)
  const root = await commitTree(t, staller, { 'f.bin': bytes('stall-alone', 400_000) })
  const b = await startDaemon(t, { exchange: { firstByteTimeoutMs: 2000 } })
  await b.node.peerStore.merge(staller.node.peerId, { multiaddrs: staller.node.getMultiaddrs() })
  await assert.rejects(b.fetchLayer(root, { hints: [staller.node.peerId] }), (err: Error) => {
    // The store wraps it (restore failed); the reason is kept as the cause.
    let e: unknown = err
    while (e instanceof Error && !(e instanceof BlockUnavailableError)) e = e.cause
    assert.ok(e instanceof BlockUnavailableError, String(err))
    return true
  })
  assert.equal(await b.store.getLayer(root), undefined)
})

test('a second daemon on the same data dir refuses to start, saying another process holds the store', async (t) => {
  const a = await startDaemon(t)
  await assert.rejects(createDaemon({ dataDir: a.dataDir, listen: ['/ip4/127.0.0.1/tcp/0'], socket: false }), {
    code: 'ERR_STORE_LOCKED',
    message: `another strata process is using the store at ${a.dataDir}`
  })
  // The first one is unaffected.
  const root = await commitTree(t, a, { f: 'still here' })
  assert.ok(await a.store.getLayer(root))
})

test('outbound block streams per connection: past 4 × streamsPerProvider the node refuses to open more', async (t) => {
  const a = await startDaemon(t, { exchange: { maxInboundStreams: 100, firstByteTimeoutMs: 60_000 } })
  const b = await startDaemon(t)
  await b.node.dial(a.node.getMultiaddrs()[0]!)
  const limit = b.exchange.init.streamsPerProvider * 4
  const streams: Stream[] = []
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  for (let i = 0; i < limit; i++) streams.push(await b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL))
  await assert.rejects(b.node.dialProtocol(a.node.peerId, BLOCKS_PROTOCOL), { name: 'TooManyOutboundProtocolStreamsError' })
})

test('10 000 block streams from one peer: those past the limit are refused, another peer is served', async (t) => {
  const a = await startDaemon(t)
  const root = await commitTree(t, a, { f: bytes('streams', 500_000) })
  const client = await rawClient(t)
  const conn = await dialRaw(client, a)
  // Until the daemon has taken one stream, yamux holds at most 10 early ones: open a first alone.
  ;(await conn.newStream(BLOCKS_PROTOCOL)).abort(new Error('probe'))
  const open: Stream[] = []
  let refused = 0
  const reasons = new Set<string>()
  for (let i = 0; i < 10_000; i += 500) {
    const batch = await Promise.allSettled(Array.from({ length: 500 }, async () => await conn.newStream(BLOCKS_PROTOCOL, { maxOutboundStreams: 20_000, signal: AbortSignal.timeout(20_000) })))
    for (const r of batch) {
      if (r.status === 'fulfilled') open.push(r.value)
      else {
        refused++
        reasons.add((r.reason as Error).name)
      }
    }
    if (conn.status !== 'open') break
  }
  // Streams negotiated before the server counted them are reset right after: wait for those resets.
  const limit = a.exchange.init.maxInboundStreams
  let closed = 0
  await new Promise<void>((resolve) => {
    const done = (): void => { if (++closed === open.length - limit) resolve() }
    if (open.length <= limit) resolve()
    for (const s of open) {
      if (s.status !== 'open') done()
      else s.addEventListener('close', done, { once: true })
    }
  })
  const b = await startDaemon(t)
  await fetchFrom(b, a, root)
  const alive = open.filter((s) => s.status === 'open').length
  // On a loaded machine the whole connection was once seen dropped part way (cause not
  // pinned down): every stream on it is then gone, also a refusal once the limit was well crossed.
  const tried = refused + open.length
  if (conn.status === 'open') assert.equal(tried, 10_000)
  else assert.ok(tried >= 2000, `the connection was dropped after only ${tried} streams`)
  assert.ok(alive <= a.exchange.init.maxInboundStreams, `refused ${refused} (${[...reasons].join(', ')}), reset ${open.length - alive}, connection ${conn.status}`)
  t.diagnostic(`${refused} refused while negotiating, ${open.length - alive} reset after, ${alive} open; connection ${conn.status}`)
  for (const s of open) s.abort(new Error('test over'))
})

test('block streams are capped per peer over all its connections, and connections per peer too', async (t) => {
  // Streams within the cap wait a minute for a want: only the one over it ends soon.
  const a = await startDaemon(t, { exchange: { maxInboundStreams: 2, firstByteTimeoutMs: 60_000 } })
  const client = await rawClient(t)
  const conns: Connection[] = []
  const refused: unknown[] = []
  for (let i = 0; i < NODE_LIMITS.connectionsPerPeer + 1; i++) {
    try {
      conns.push(await dialRaw(client, a, { force: true }))
    } catch (err) {
      refused.push(err)
    }
  }
  // The gater refuses the extra connection after the handshake; the dialer may see it open, then closed.
  await until('the connections over the limit to close', () => conns.filter((c) => c.status === 'open').length <= NODE_LIMITS.connectionsPerPeer)
  const live = conns.filter((c) => c.status === 'open')
  assert.equal(live.length, NODE_LIMITS.connectionsPerPeer, `${live.length} connections open, ${refused.length} refused`)
  assert.equal(a.node.getConnections(client.peerId).length, NODE_LIMITS.connectionsPerPeer)
  // One block stream on each of three connections: the third is over the per-peer cap of 2.
  const streams = await Promise.all(live.slice(0, 3).map(async (c) => await c.newStream(BLOCKS_PROTOCOL)))
  t.after(() => { for (const s of streams) s.abort(new Error('test over')) })
  await Promise.race(streams.map(async (s) => await ended(s)))
  assert.equal(streams.filter((s) => s.status === 'open').length, 2, 'not exactly one stream was cut off')
})

test('the serving rate per peer: a fetch over the limit is throttled and completes', async (t) => {
  const slow = await startDaemon(t, { exchange: { servePeerBytesPerSecond: 2 * 1024 * 1024, servePeerBurstBytes: 1 } })
  const fast = await startDaemon(t)
  const tree = { 'f.bin': bytes('rate', 3 * 1024 * 1024) }
  const slowRoot = await commitTree(t, slow, tree)
  await commitTree(t, fast, tree)
  const b = await startDaemon(t)
  await fetchFrom(b, slow, slowRoot)
  assert.ok(slow.exchange.counters.blocksThrottled > 0, 'nothing was throttled')
  const c = await startDaemon(t)
  await fetchFrom(c, fast, slowRoot)
  assert.equal(fast.exchange.counters.blocksThrottled, 0)
})

test('the token bucket: a burst, then the rate, per key and bounded in keys', () => {
  let now = 0
  const r = new RateLimiter(1000, 500, { now: () => now, maxKeys: 2 })
  assert.equal(r.take('a', 500), 0)
  assert.equal(r.take('a', 250), 250)
  assert.equal(r.take('a', 250), 500, 'a second reservation waits behind the first')
  assert.equal(r.take('b', 100), 0, 'another peer has its own bucket')
  now = 2000
  assert.equal(r.take('a', 500), 0, 'the bucket refills, up to the burst')
  r.take('c', 1)
  assert.ok(r.size <= 2)
  assert.throws(() => new RateLimiter(0, 1), TypeError)
})

test('the ban list is bounded: past its size the oldest bans go first', () => {
  const ex = new BlockExchange({
    store: { getBlock: async () => { throw new Error('no store') } },
    registrar: { handle: async () => {}, unhandle: async () => {} },
    dialProtocol: async () => { throw new Error('no network') },
    logger: pino({ level: 'silent' })
  })
  for (let i = 0; i < MAX_BANS + 500; i++) ex.ban(`peer-${i}`, 'test')
  assert.equal(ex.banned.length, MAX_BANS)
  assert.equal(ex.isBanned('peer-0'), false, 'the oldest ban was kept')
  assert.equal(ex.isBanned(`peer-${MAX_BANS + 499}`), true)
})

test('blocks landed for peers sharing a fetch are dropped after landedMs, and past landedBytes the oldest first', async () => {
  const ex = new BlockExchange({
    store: { getBlock: async () => { throw new Error('no store') } },
    registrar: { handle: async () => {}, unhandle: async () => {} },
    dialProtocol: async () => { throw new Error('no network') },
    logger: pino({ level: 'silent' })
  }, { landedBytes: 3000, landedMs: 200 })
  for (let i = 0; i < 4; i++) ex.landed(`block-${i}`, new Uint8Array(1000))
  assert.deepEqual(ex.landedStats, { blocks: 3, bytes: 3000 }, 'past its bytes the oldest block goes')
  // An idle daemon keeps none of them: every fetched layer once stayed in memory up to landedBytes.
  const deadline = Date.now() + 30_000
  while (ex.landedStats.blocks > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual(ex.landedStats, { blocks: 0, bytes: 0 })
})

function rssOf (pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m?.[1] ?? 0) * 1024
}

/**
 * RSS a want-list flood may add to the daemon (doc/LIMITS.md), which also runs
 * under a capped V8 heap: a daemon that kept what a flood sends would die of it.
 */
const FLOOD_RSS_BOUND = 96 * 1024 * 1024
const FLOOD_HEAP_MB = 256

// The daemon answers a want-list of CIDs it lacks in one write, fast enough to keep
// up with a flood on its own streams; one want-list's worth of outstanding wants per
// peer makes any two it holds at once from this peer cross the limit.
test('a want-list flood of 10^6 CIDs: streams reset, daemon RSS bounded, another peer served', async (t) => {
  const dir = tempDir(t)
  writeFixedTree(`${dir}/upper`, { f: bytes('flood', 600_000) })
  const child = spawn(process.execPath, [`--max-old-space-size=${FLOOD_HEAP_MB}`, new URL('./fixtures/limits-daemon.ts', import.meta.url).pathname, `${dir}/data`, `${dir}/upper`, JSON.stringify({ idleTimeoutMs: 2000, maxOutstandingWants: MAX_WANTS_PER_MESSAGE }), `${dir}/daemon.log`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const [line] = await once(createInterface({ input: child.stdout }), 'line') as [string]
  const info = JSON.parse(line) as { peerId: string, addresses: string[], root: string }
  const before = rssOf(child.pid!)
  let peak = before
  const sampler = setInterval(() => { peak = Math.max(peak, rssOf(child.pid!)) }, 50)
  t.after(() => clearInterval(sampler))

  const client = await rawClient(t)
  const conn = await client.dial(multiaddr(info.addresses[0]!))
  const total = 1_000_000
  const perStream = 8
  const frame = (): Uint8Array => {
    // 256 syntactically valid CIDs the daemon does not have.
    const digests = randomBytes(32 * MAX_WANTS_PER_MESSAGE)
    return encodeWant(Array.from({ length: MAX_WANTS_PER_MESSAGE }, (_, i) => CID.decode(Uint8Array.of(0x01, 0x55, 0x12, 0x20, ...digests.subarray(i * 32, i * 32 + 32)))))
  }
  const one = frame()
  const framed = new Uint8Array(varint(one.length).length + one.length)
  framed.set(varint(one.length))
  framed.set(one, framed.length - one.length)
  let wanted = 0
  let cutOff = 0
  const flood = async (): Promise<Error | undefined> => {
    const s = await conn.newStream(BLOCKS_PROTOCOL).catch((err: Error) => err)
    if (s instanceof Error) return s
    const end = ended(s)
    while (wanted < total && s.status === 'open') {
      wanted += MAX_WANTS_PER_MESSAGE
      if (!s.send(framed)) await Promise.race([once(s, 'drain'), end])
    }
    if (wanted < total) cutOff++
    return await end
  }
  const results = await Promise.all(Array.from({ length: perStream }, flood))
  // Every stream ends in a reset: the ones that pushed the peer past its outstanding
  // wants at once, and the rest at the idle timeout once the client stops asking.
  assert.ok(results.every((e) => e !== undefined), 'a flooded stream ended cleanly')
  assert.ok(cutOff > 0, 'no stream was cut off while flooding')
  const log = readFileSync(`${dir}/daemon.log`, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { event?: string, err?: { code?: string } })
  const limited = log.filter((l) => l.event === 'block-stream-aborted' && l.err?.code === 'ERR_PEER_LIMIT').length
  assert.ok(limited > 0, 'no stream was reset for its outstanding wants')
  t.diagnostic(`${wanted} CIDs sent, ${cutOff} of ${perStream} streams cut off mid-flood (${limited} for outstanding wants), daemon RSS ${(before / 1048576).toFixed(0)} -> peak ${(peak / 1048576).toFixed(0)} MiB`)
  const c = await startDaemon(t)
  await fetchFrom(c, info, CID.parse(info.root))
  clearInterval(sampler)
  assert.ok(peak - before < FLOOD_RSS_BOUND, `daemon RSS grew ${((peak - before) / 1048576).toFixed(0)} MiB`)
  child.kill('SIGTERM')
  await once(child, 'exit')
})
