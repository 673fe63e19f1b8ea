import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { tempDir, until } from '@strata/testing'
import { createDaemon } from '../src/index.ts'
import type { Daemon } from '../src/index.ts'
import { checkBootstrapAddress, checkDnsServer, Discovery } from '../src/discovery.ts'
import { startDaemon } from './helpers.ts'

/** Waits until `daemon` is connected to `peer` (the test's own timeout bounds it). */
async function connectedTo (daemon: Daemon, peer: string): Promise<void> {
  await until(`a connection to ${peer}`, () => daemon.node.getPeers().some((p) => p.toString() === peer), { everyMs: 50 })
}

const portOf = (d: Daemon): string => d.node.getMultiaddrs()[0]!.getComponents().find((c) => c.name === 'tcp')!.value!

test('joins the fleet through an address without a peer id: Noise says who answered', { timeout: 30_000 }, async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t, { bootstrap: [`/ip4/127.0.0.1/tcp/${portOf(a)}`] })
  await connectedTo(b, a.peerId)
  await connectedTo(a, b.peerId)
})

test('a DNS name is resolved by the system resolver when no DNS server is given', { timeout: 30_000 }, async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t, { bootstrap: [`/dns4/localhost/tcp/${portOf(a)}`] })
  await connectedTo(b, a.peerId)
})

test('a node replaced on the same address, with a new identity, is dialled again on the next round', { timeout: 60_000 }, async (t) => {
  const a = await startDaemon(t)
  const port = portOf(a)
  const b = await startDaemon(t, { bootstrap: [`/ip4/127.0.0.1/tcp/${port}`], bootstrapIntervalMs: 200 })
  await connectedTo(b, a.peerId)
  await a.stop()
  const replaced = await startDaemon(t, { listen: [`/ip4/127.0.0.1/tcp/${port}`] })
  assert.notEqual(replaced.peerId, a.peerId)
  await connectedTo(b, replaced.peerId)
})

test('with an interval of 0 the bootstrap list is dialled at start only', { timeout: 30_000 }, async (t) => {
  const a = await startDaemon(t)
  const port = portOf(a)
  const b = await startDaemon(t, { bootstrap: [`/ip4/127.0.0.1/tcp/${port}`], bootstrapIntervalMs: 0 })
  await connectedTo(b, a.peerId)
  await a.stop()
  const replaced = await startDaemon(t, { listen: [`/ip4/127.0.0.1/tcp/${port}`] })
  // The replacement never dials b and b never dials again: an explicit round is what connects them.
  assert.ok(!b.node.getPeers().some((p) => p.toString() === replaced.peerId))
  const round = new Discovery({
    peerId: b.node.peerId,
    dial: async (addr, o) => await b.node.dial(addr, o),
    connected: (peer) => b.node.getPeers().some((p) => p.toString() === peer),
    ownAddresses: () => b.node.getMultiaddrs(),
    logger: pino({ level: 'silent' })
  }, { bootstrap: [`/ip4/127.0.0.1/tcp/${port}`], intervalMs: 0 })
  await round.round(AbortSignal.timeout(10_000))
  assert.ok(b.node.getPeers().some((p) => p.toString() === replaced.peerId))
})

test('a node with no peer dials its bootstrap list again within seconds, not after the whole interval', { timeout: 40_000 }, async (t) => {
  // A free port: a daemon's, stopped. The bootstrap peer comes up there after the first round failed.
  const first = await startDaemon(t)
  const port = portOf(first)
  await first.stop()
  const b = await startDaemon(t, { bootstrap: [`/ip4/127.0.0.1/tcp/${port}`], bootstrapIntervalMs: 10 * 60_000 })
  await delay(500)
  const a = await startDaemon(t, { listen: [`/ip4/127.0.0.1/tcp/${port}`] })
  await connectedTo(b, a.peerId)
})

test('a bootstrap dial that never settles does not stop the rounds after it', { timeout: 30_000 }, async (t) => {
  const a = await startDaemon(t)
  let dials = 0
  const d = new Discovery({
    peerId: (await startDaemon(t)).node.peerId,
    // The first dial ignores its signal and never settles; the next ones are ordinary.
    dial: async (addr, o) => { if (dials++ === 0) return await new Promise(() => {}); return await a.node.dial(addr, o) },
    connected: () => false,
    ownAddresses: () => [],
    peerCount: () => 0,
    logger: pino({ level: 'silent' })
  }, { bootstrap: [`/ip4/127.0.0.1/tcp/${portOf(a)}`], intervalMs: 100, dialTimeoutMs: 200 })
  d.start()
  t.after(async () => { await d.stop() })
  await until('three dials', () => dials >= 3, { everyMs: 50 })
  assert.ok(d.rounds >= 2)
})

test('a node never dials its own address from the bootstrap list', { timeout: 30_000 }, async (t) => {
  const a = await startDaemon(t)
  let dials = 0
  const d = new Discovery({
    peerId: a.node.peerId,
    dial: async (addr, o) => { dials++; return await a.node.dial(addr, o) },
    connected: () => false,
    ownAddresses: () => a.node.getMultiaddrs(),
    logger: pino({ level: 'silent' })
  }, { bootstrap: [a.addresses[0]!, a.addresses[0]!.replace(/\/p2p\/.*/, '')], intervalMs: 0 })
  await d.round(AbortSignal.timeout(10_000))
  assert.equal(dials, 0)
})

test('bootstrap addresses and DNS servers are checked: ERR_DAEMON_CONFIG names the bad one', async (t) => {
  const dataDir = tempDir(t)
  for (const bootstrap of ['/ip4/10.0.0.1', '/tcp/7401', 'fleet.internal:7401', '/dns4/fleet.internal/tcp/7401/ws', '/ip4/10.0.0.1/udp/7401']) {
    await assert.rejects(createDaemon({ dataDir, bootstrap: [bootstrap] }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_DAEMON_CONFIG')
      assert.ok(err.message.includes(JSON.stringify(bootstrap)), err.message)
      return true
    })
  }
  await assert.rejects(createDaemon({ dataDir, dnsServer: 'dns.internal' }), { code: 'ERR_DAEMON_CONFIG', message: /"dns\.internal" is not IP or IP:PORT/ })
  await assert.rejects(createDaemon({ dataDir, bootstrapIntervalMs: -1 }), { code: 'ERR_DAEMON_CONFIG' })
  for (const ok of ['/ip4/10.0.0.1/tcp/7401', '/ip6/::1/tcp/7401', '/dns/fleet.internal/tcp/7401', '/dnsaddr/fleet.example.com', '/dnsaddr/fleet.example.com/p2p/12D3KooWHFrmLWTTDD4NodngtRMEVYgxrsDMp4F83ZJ4H6NsgYmm']) {
    assert.equal(checkBootstrapAddress(ok).toString(), multiaddr(ok).toString())
  }
  for (const ok of ['10.0.0.1', '10.0.0.1:5353', '[::1]:53', '::1']) assert.equal(checkDnsServer(ok), ok)
})
