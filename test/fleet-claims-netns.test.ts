import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { RECORD_FORMAT, loadIdentity, recordKey, signRecord } from '@strata/records'
import type { FleetClaim } from '@strata/daemon/client'
import { Fleet, waitFor } from '../scripts/fleet-lib.ts'
import { CLAIMANT_SCRIPT } from '../packages/daemon/test/helpers.ts'
import { workDir } from './helpers.ts'

const root = join(import.meta.dirname, '..')
const freshKey = (): string => cidOf(DAG_CBOR, dagCbor.encode({ claim: randomBytes(16) })).toString()

/** A fleet of `n` daemons that all hear each other's claims. */
async function claimFleet (t: { after: (fn: () => Promise<void>) => void }, dir: string, n: number): Promise<Fleet> {
  const fleet = await Fleet.create({ hosts: n, workDir: join(dir, 'fleet'), prefix: `claimnet${randomBytes(3).toString('hex')}`, daemonArgs: ['--replicas', '0'] })
  t.after(async () => { await fleet.destroy() })
  for (let i = 0; i < n; i++) fleet.start(i, { bootstrap: [0] })
  for (let i = 0; i < n; i++) await fleet.ready(i, { peers: n - 1 })
  for (let i = 0; i < n; i++) {
    await waitFor(`h${i + 1} hears every peer's claims`, 30_000, async () => (await fleet.status(i)).claims.subscribers >= n - 1 ? true : undefined)
  }
  return fleet
}

const statuses = (cs: FleetClaim[]): string => cs.map((c) => c.status).join(', ')

test('two hosts: claims made at the same moment grant exactly one; the other settles with "record" when the builder publishes', { timeout: 180_000 }, async (t) => {
  const dir = workDir(t, 'claimnet-two')
  const fleet = await claimFleet(t, dir, 2)
  const clients = [await fleet.client(0), await fleet.client(1)]
  for (let round = 0; round < 3; round++) {
    const key = freshKey()
    const claims = await Promise.all(clients.map(async (c) => await c.claim(key, { scope: 'default' })))
    const winner = claims.findIndex((c) => c.status === 'granted')
    assert.equal(claims.filter((c) => c.status === 'granted').length, 1, `round ${round}: ${statuses(claims)}`)
    const builder = claims[winner] as FleetClaim & { status: 'granted' }
    const waiter = claims[1 - winner] as FleetClaim & { status: 'held' }
    assert.equal(waiter.holder, fleet.daemons[winner]!.peerId)
    const settled = waiter.settled({ timeoutMs: 60_000 })
    // The builder commits a layer and stores its signed record, as a runner does after a step.
    const upper = join(dir, `upper-${round}`)
    mkdirSync(upper)
    writeFileSync(join(upper, 'built'), `round ${round}\n`)
    const layer = await clients[winner]!.commit(upper)
    const me = await loadIdentity(fleet.daemons[winner]!.dataDir)
    await clients[winner]!.putRecord(recordKey(key, 'default'), signRecord({
      v: RECORD_FORMAT, key: CID.parse(key), parent: null, layer: layer.root, size: layer.size, env: [], created: Date.now(), producer: me.peerId, scope: 'default', epoch: 0, writer: null
    }, me))
    await builder.release('built')
    assert.equal(await settled, 'record')
  }
  const [s0, s1] = [await fleet.status(0), await fleet.status(1)]
  assert.equal(s0.claims.granted + s1.claims.granted, 3)
  assert.equal(s0.claims.held + s1.claims.held, 3)
})

test('three hosts: one of three simultaneous claims is granted; a failed build settles "released"; a claimant killed -9 settles "expired"', { timeout: 180_000 }, async (t) => {
  const dir = workDir(t, 'claimnet-three')
  const fleet = await claimFleet(t, dir, 3)
  const clients = [await fleet.client(0), await fleet.client(1), await fleet.client(2)]

  const key = freshKey()
  const claims = await Promise.all(clients.map(async (c) => await c.claim(key, { scope: 'default' })))
  assert.equal(claims.filter((c) => c.status === 'granted').length, 1, statuses(claims))
  const winner = claims.findIndex((c) => c.status === 'granted')
  const waits = claims.flatMap((c) => c.status === 'held' ? [c.settled({ timeoutMs: 60_000 })] : [])
  assert.equal(waits.length, 2)
  await (claims[winner] as FleetClaim & { status: 'granted' }).release('failed')
  assert.deepEqual(await Promise.all(waits), ['released', 'released'])

  // A runner process on h1 claims a key and is killed -9 while it holds it.
  const key2 = freshKey()
  const child = fleet.hosts[0]!.spawn(process.execPath, ['--input-type=module', '-e', CLAIMANT_SCRIPT, fleet.daemons[0]!.dataDir, key2], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  const kill9 = (): void => {
    try {
      process.kill(-child.pid!, 'SIGKILL')
    } catch {
      // Gone already.
    }
  }
  t.after(kill9)
  const [line] = await once(child.stdout!, 'data') as [Buffer]
  assert.equal(line.toString().trim(), 'granted')
  const held = await Promise.all([clients[1]!.claim(key2, { scope: 'default' }), clients[2]!.claim(key2, { scope: 'default' })])
  assert.deepEqual(held.map((c) => c.status), ['held', 'held'])
  const expiring = held.map(async (c) => c.status === 'held' ? await c.settled({ timeoutMs: 60_000 }) : c.status)
  const exited = once(child, 'exit')
  kill9()
  await exited
  assert.deepEqual(await Promise.all(expiring), ['expired', 'expired'])
  for (const i of [1, 2]) assert.equal((await fleet.status(i)).claims.expired, 1)
  // Nobody holds the key now: the next claim is granted.
  const after = await clients[1]!.claim(key2, { scope: 'default' })
  assert.equal(after.status, 'granted')
  if (after.status === 'granted') await after.release('failed')
})
