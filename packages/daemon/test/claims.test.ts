import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import type { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { generateWriterKey } from '@strata/records'
import { connectDaemon } from '../src/client.ts'
import type { DaemonClient, FleetClaim } from '../src/client.ts'
import type { Daemon } from '../src/index.ts'
import { tempDir, until } from '@strata/testing'
import { CLAIMANT_SCRIPT, connect, publishLayer, startDaemon } from './helpers.ts'

const freshKey = (): CID => cidOf(DAG_CBOR, dagCbor.encode({ claim: randomBytes(16) }))

async function clientOf (t: TestContext, d: Daemon): Promise<DaemonClient> {
  const c = await connectDaemon(d.dataDir)
  assert.ok(c !== undefined)
  t.after(async () => { await c.close() })
  return c
}

/** Daemons connected to each other, with a control client each. */
async function fleet (t: TestContext, n: number, init: Parameters<typeof startDaemon>[1] = {}): Promise<Array<{ daemon: Daemon, client: DaemonClient }>> {
  const daemons: Daemon[] = []
  for (let i = 0; i < n; i++) daemons.push(await startDaemon(t, init))
  await connect(daemons)
  for (const d of daemons) {
    const deadline = Date.now() + 10_000
    while (d.node.services.pubsub.getSubscribers('/strata/claims/1').length < n - 1) {
      if (Date.now() > deadline) throw new Error('peers did not subscribe to the claims topic')
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  return await Promise.all(daemons.map(async (daemon) => ({ daemon, client: await clientOf(t, daemon) })))
}

/** A runner-like process that claims `key` through `d`'s socket, says it was granted, and holds the claim until killed. */
async function claimant (t: TestContext, d: Daemon, key: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CLAIMANT_SCRIPT, d.dataDir, key], { cwd: join(import.meta.dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => { child.kill('SIGKILL') })
  const [line] = await once(child.stdout, 'data') as [Buffer]
  assert.equal(line.toString().trim(), 'granted')
  return child
}

const granted = (cs: FleetClaim[]): Array<FleetClaim & { status: 'granted' }> => cs.filter((c): c is FleetClaim & { status: 'granted' } => c.status === 'granted')
const held = (cs: FleetClaim[]): Array<FleetClaim & { status: 'held' }> => cs.filter((c): c is FleetClaim & { status: 'held' } => c.status === 'held')

test('two nodes claiming one key at the same moment: exactly one is granted, the other is told who holds it', { timeout: 120_000 }, async (t) => {
  const nodes = await fleet(t, 2)
  for (let round = 0; round < 4; round++) {
    const key = freshKey().toString()
    const claims = await Promise.all(nodes.map(async (n) => await n.client.claim(key, { scope: 'default' })))
    assert.equal(granted(claims).length, 1, `round ${round}: ${claims.map((c) => c.status).join(', ')}`)
    const winner = nodes[claims.findIndex((c) => c.status === 'granted')]!
    assert.equal(held(claims)[0]!.holder, winner.daemon.peerId)
    await granted(claims)[0]!.release('failed')
  }
  const totals = nodes.map((n) => n.daemon.claimCounters)
  assert.equal(totals.reduce((s, c) => s + c.granted, 0), 4)
  assert.equal(totals.reduce((s, c) => s + c.held, 0), 4)
})

test('four nodes claiming one key at the same moment, ten times: each time exactly one is granted', { timeout: 120_000 }, async (t) => {
  const nodes = await fleet(t, 4)
  for (let round = 0; round < 10; round++) {
    const key = freshKey().toString()
    const claims = await Promise.all(nodes.map(async (n) => await n.client.claim(key, { scope: 'default' })))
    assert.equal(granted(claims).length, 1, `round ${round}: ${claims.map((c) => c.status).join(', ')}`)
    // A node handed a claim before it made its own waits on that one, which may still lose: its wait then ends 'released' and it claims again.
    claims.forEach((c, i) => { if (c.status === 'held') assert.ok(nodes.some((n, j) => j !== i && n.daemon.peerId === c.holder), `round ${round}: node ${i} waits on ${c.holder}`) })
    await granted(claims)[0]!.release('failed')
  }
})

test('claims made at the same moment meet through their pushes alone: with the claims topic silent, still exactly one is granted', { timeout: 120_000 }, async (t) => {
  const nodes = await fleet(t, 4)
  for (const { daemon } of nodes) {
    const pubsub = daemon.node.services.pubsub
    const publish = pubsub.publish.bind(pubsub)
    pubsub.publish = (async (topic: string, data: Uint8Array) => topic === '/strata/claims/1' ? { recipients: [] } : await publish(topic, data)) as typeof pubsub.publish
  }
  for (let round = 0; round < 10; round++) {
    const key = freshKey().toString()
    const claims = await Promise.all(nodes.map(async (n) => await n.client.claim(key, { scope: 'default' })))
    assert.equal(granted(claims).length, 1, `round ${round}: ${claims.map((c) => c.status).join(', ')}`)
  }
})

test('a held claim settles with "record" when the builder publishes its record, also when asked after it landed', { timeout: 120_000 }, async (t) => {
  const [builder, waiter] = await fleet(t, 2)
  const key = freshKey()
  const mine = await builder!.client.claim(key.toString(), { scope: 'default' })
  assert.equal(mine.status, 'granted')
  const theirs = await waiter!.client.claim(key.toString(), { scope: 'default' })
  assert.equal(theirs.status, 'held')
  assert.equal(theirs.holder, builder!.daemon.peerId)
  const settled = theirs.settled({ timeoutMs: 60_000 })
  await publishLayer(t, builder!.daemon, { f: 'built once' }, { key })
  await mine.release('built')
  assert.equal(await settled, 'record')
  // Asked again later, with the record already here, a wait ends at once.
  assert.equal(await theirs.settled({ timeoutMs: 60_000 }), 'record')
})

test('a held claim settles with "released" when the builder fails, and the key can be claimed again', { timeout: 120_000 }, async (t) => {
  const [builder, waiter] = await fleet(t, 2)
  const key = freshKey().toString()
  const mine = await builder!.client.claim(key, { scope: 'default' })
  assert.equal(mine.status, 'granted')
  const theirs = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  const settled = theirs.settled({ timeoutMs: 60_000 })
  await mine.release('failed')
  assert.equal(await settled, 'released')
  const again = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(again.status, 'granted')
  if (again.status === 'granted') await again.release('failed')
})

test('a wait with nothing happening ends with "timeout"; an aborted wait rejects', { timeout: 120_000 }, async (t) => {
  const [builder, waiter] = await fleet(t, 2)
  const key = freshKey().toString()
  const mine = await builder!.client.claim(key, { scope: 'default' })
  const theirs = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  assert.equal(await theirs.settled({ timeoutMs: 200 }), 'timeout')
  await assert.rejects(theirs.settled({ timeoutMs: 60_000, signal: AbortSignal.timeout(200) }))
  if (mine.status === 'granted') await mine.release('failed')
})

test('a node that connects after a claim was announced learns it by asking its peers directly', { timeout: 120_000 }, async (t) => {
  const early = await startDaemon(t)
  const late = await startDaemon(t)
  const key = freshKey().toString()
  const mine = await (await clientOf(t, early)).claim(key, { scope: 'default' })
  assert.equal(mine.status, 'granted')
  // Gossip does not replay: only the direct ask at claim time can tell the late node.
  await late.node.dial(early.node.getMultiaddrs()[0]!)
  const theirs = await (await clientOf(t, late)).claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  assert.equal(theirs.holder, early.peerId)
  if (mine.status === 'granted') await mine.release('failed')
})

test('a peer\'s claim counts only when its signer is trusted for the scope; a refused one is counted by reason', { timeout: 120_000 }, async (t) => {
  const { key: writer } = generateWriterKey('ci-main-1')
  const trusting = await startDaemon(t, { trustedWriters: [`${writer.id}@default`] })
  const other = await startDaemon(t)
  await connect([trusting, other])
  const [tc, oc] = [await clientOf(t, trusting), await clientOf(t, other)]
  // Signed by the other node's identity: the trusting node does not trust it.
  const key = freshKey().toString()
  const byIdentity = await oc.claim(key, { scope: 'default' })
  assert.equal(byIdentity.status, 'granted')
  const mine = await tc.claim(key, { scope: 'default' })
  assert.equal(mine.status, 'granted', 'an untrusted claim does not hold the key')
  assert.ok((trusting.claimsRejected['untrusted-signer'] ?? 0) >= 1)
  assert.ok(trusting.claimCounters.rejected >= 1)
  for (const c of [byIdentity, mine]) if (c.status === 'granted') await c.release('failed')
  // Signed by the trusted writer key (the client signs, the daemon announces).
  oc.signClaimsWith(writer)
  const key2 = freshKey().toString()
  const byWriter = await oc.claim(key2, { scope: 'default' })
  assert.equal(byWriter.status, 'granted')
  const waits = await tc.claim(key2, { scope: 'default' })
  assert.equal(waits.status, 'held')
  assert.equal(waits.holder, other.peerId)
  const settled = waits.settled({ timeoutMs: 60_000 })
  if (byWriter.status === 'granted') await byWriter.release('failed')
  assert.equal(await settled, 'released', 'the writer-signed release reached the peer')
})

test('when the claimant process is killed, its daemon stops renewing and the waiter sees the claim expire', { timeout: 120_000 }, async (t) => {
  const [builder, waiter] = await fleet(t, 2)
  const key = freshKey().toString()
  const child = await claimant(t, builder!.daemon, key)
  const theirs = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  const settled = theirs.settled({ timeoutMs: 60_000 })
  child.kill('SIGKILL')
  await once(child, 'exit')
  assert.equal(await settled, 'expired')
  assert.equal(waiter!.daemon.claimCounters.expired, 1)
  const again = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(again.status, 'granted', 'nobody holds the key any more')
  if (again.status === 'granted') await again.release('failed')
  const metrics = await waiter!.daemon.metrics.text()
  assert.match(metrics, /^strata_claims_expired_total 1$/m)
  assert.match(metrics, /^strata_claims_held_total 1$/m)
  assert.match(metrics, /^strata_claims_granted_total 1$/m)
})

test('a claim renewed by its client outlives its lease, whether the node or a writer key signs the renewals', { timeout: 120_000 }, async (t) => {
  const { key: writer } = generateWriterKey('ci-main-1')
  const nodes = await fleet(t, 2)
  const [byIdentity, byWriter] = [freshKey().toString(), freshKey().toString()]
  const mine = await nodes[0]!.client.claim(byIdentity, { scope: 'default' })
  nodes[0]!.client.signClaimsWith(writer)
  const signed = await nodes[0]!.client.claim(byWriter, { scope: 'default' })
  assert.deepEqual([mine.status, signed.status], ['granted', 'granted'])
  const theirs = await Promise.all([byIdentity, byWriter].map(async (k) => await nodes[1]!.client.claim(k, { scope: 'default' })))
  // Well past one lease (10 s): only renewals keep the claims live.
  const outcomes = await Promise.all(held(theirs).map(async (c) => await c.settled({ timeoutMs: 15_000 })))
  assert.deepEqual(outcomes, ['timeout', 'timeout'])
  assert.equal(nodes[1]!.daemon.claimCounters.expired, 0)
  for (const c of granted([mine, signed])) await c.release('failed')
})

test('a new claim on a node supersedes the node\'s own claim whose client died: granted at once, and the peers waiting on the old one are told it was released', { timeout: 120_000 }, async (t) => {
  const [builder, waiter] = await fleet(t, 2)
  const key = freshKey().toString()
  const child = await claimant(t, builder!.daemon, key)
  const theirs = await waiter!.client.claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  const settled = theirs.settled({ timeoutMs: 60_000 })
  child.kill('SIGKILL')
  await once(child, 'exit')
  // The runner that takes over holds this machine's claim file: the dead runner's fleet claim is not a reason to wait.
  const next = await builder!.client.claim(key, { scope: 'default' })
  assert.equal(next.status, 'granted')
  assert.equal(await settled, 'released')
  if (next.status === 'granted') await next.release('failed')
})

test('a granted claim outlives a restart of its daemon: at its next renewal the client claims the key again', { timeout: 120_000 }, async (t) => {
  const dataDir = tempDir(t)
  const first = await startDaemon(t, { dataDir })
  const other = await startDaemon(t)
  await connect([first, other])
  const client = await clientOf(t, first)
  const key = freshKey().toString()
  const mine = await client.claim(key, { scope: 'default' })
  assert.equal(mine.status, 'granted')
  await first.stop()
  const again = await startDaemon(t, { dataDir })
  await connect([again, other])
  assert.equal(again.claims.table.live(key).length, 0, 'a restarted daemon starts with no claim')
  await until('the client to claim the key again', () => again.claims.table.live(key).some((l) => l.own), { timeoutMs: 30_000 })
  const theirs = await (await clientOf(t, other)).claim(key, { scope: 'default' })
  assert.equal(theirs.status, 'held')
  assert.equal(theirs.status === 'held' ? theirs.holder : '', again.peerId)
  if (mine.status === 'granted') await mine.release('failed')
  await until('the release to reach the peer', () => other.claims.table.live(key).length === 0, { timeoutMs: 30_000 })
})
