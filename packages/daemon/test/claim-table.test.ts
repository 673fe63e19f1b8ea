import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import { CLAIM_FORMAT, TrustPolicy, generateWriterKey, loadIdentity, signClaim } from '@strata/records'
import type { Identity, RecordRejectReason, StepClaim, WriterKey } from '@strata/records'
import { tempDir } from '@strata/testing'
import { ClaimTable, beats } from '../src/claim-table.ts'
import type { ClaimEnd, ClaimCounters, LiveClaim } from '../src/claim-table.ts'

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const OTHER = CID.parse('bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q')

/** A table on a clock the test moves by hand. */
function tableOf (self: string, writers: string[] | undefined, opts: { maxClaims?: number, maxPerKey?: number, epoch?: number } = {}): {
  table: ClaimTable, clock: { now: number }, ended: Array<[string, ClaimEnd]>, counters: ClaimCounters, rejected: Partial<Record<RecordRejectReason, number>>
} {
  const clock = { now: 1000 }
  const ended: Array<[string, ClaimEnd]> = []
  const counters = { granted: 0, held: 0, expired: 0, rejected: 0 }
  const rejected: Partial<Record<RecordRejectReason, number>> = {}
  const table = new ClaimTable({ now: () => clock.now, ended: (l: LiveClaim, how) => { ended.push([l.id, how]) }, logger: pino({ level: 'silent' }) }, {
    trust: new TrustPolicy(self, writers, opts.epoch ?? 0), self, counters, rejected, maxClaims: opts.maxClaims, maxPerKey: opts.maxPerKey
  })
  return { table, clock, ended, counters, rejected }
}

function claimBy (who: Identity, over: Partial<StepClaim> = {}, writer?: WriterKey): Uint8Array {
  const claim: StepClaim = { v: CLAIM_FORMAT, key: KEY, claimant: who.peerId, writer: writer?.id ?? null, scope: 'default', epoch: 0, id: new Uint8Array(16).fill(5), leaseMs: 10_000, seq: 0, release: false, ...over }
  return signClaim(claim, writer ?? who)
}

const id = (byte: number): Uint8Array => new Uint8Array(16).fill(byte)
const hex = (byte: number): string => Buffer.from(id(byte)).toString('hex')

async function peers (t: TestContext, n: number): Promise<Identity[]> {
  return await Promise.all(Array.from({ length: n }, async () => await loadIdentity(tempDir(t))))
}

test('a peer\'s claim lives its lease from receipt on this node\'s clock, and each renewal starts the lease again', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table, clock, ended, counters } = tableOf(me!.peerId, undefined)
  assert.equal(table.receive(claimBy(a!, { id: id(1) })), 'added')
  clock.now += 9_999
  assert.equal(table.winner(KEY.toString())?.claim.claimant, a!.peerId)
  assert.equal(table.receive(claimBy(a!, { id: id(1), seq: 1 })), 'renewed')
  clock.now += 9_999
  assert.equal(table.live(KEY.toString()).length, 1, 'the renewal moved the expiry')
  clock.now += 1
  table.sweep()
  assert.equal(table.live(KEY.toString()).length, 0)
  assert.deepEqual(ended, [[hex(1), 'expired']])
  assert.equal(counters.expired, 1)
  assert.equal(table.endOf(hex(1)), 'expired')
})

test('an old or repeated message does not renew a claim, and an ended claim is not brought back by a replay', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table, clock } = tableOf(me!.peerId, undefined)
  const first = claimBy(a!, { id: id(1), seq: 3 })
  table.receive(first)
  clock.now += 5_000
  assert.equal(table.receive(claimBy(a!, { id: id(1), seq: 2 })), 'stale')
  assert.equal(table.receive(first), 'stale')
  assert.equal(table.get(hex(1))!.expiresAt, 1000 + 10_000, 'the expiry stayed where the newest message set it')
  assert.equal(table.receive(claimBy(a!, { id: id(1), seq: 4, release: true })), 'released')
  assert.equal(table.receive(claimBy(a!, { id: id(1), seq: 5 })), 'ended')
  assert.equal(table.live(KEY.toString()).length, 0)
})

test('an ended claim is remembered for minutes, past any replay or lease, then forgotten', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table, clock } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(1) }))
  table.receive(claimBy(a!, { id: id(1), seq: 1, release: true }))
  clock.now += 4 * 60_000
  assert.equal(table.receive(claimBy(a!, { id: id(1), seq: 2 })), 'ended', 'a replay four minutes later')
  clock.now += 6 * 60_000
  assert.equal(table.endOf(hex(1)), undefined, 'ten minutes later the id is forgotten: the table does not grow with every claim ever seen')
})

test('a release ends a claim at once and says so', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table, ended, counters } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(1) }))
  table.receive(claimBy(a!, { id: id(1), seq: 1, release: true }))
  assert.deepEqual(ended, [[hex(1), 'released']])
  assert.equal(counters.expired, 0)
  assert.equal(table.endOf(hex(1)), 'released')
})

test('only trusted signers\' claims count, each refusal counted by reason', async (t) => {
  const [me, a, b] = await peers(t, 3)
  const { key: writer } = generateWriterKey('ci-main-1')
  const { table, counters, rejected } = tableOf(me!.peerId, [`${writer.id}@main`, a!.peerId], { epoch: 2 })
  assert.equal(table.receive(claimBy(b!, { id: id(1), epoch: 2 })), 'rejected', 'b is not a trusted writer')
  assert.equal(table.receive(claimBy(b!, { id: id(2), scope: 'pr/1', epoch: 2 }, writer)), 'rejected', 'the writer is trusted in main only')
  assert.equal(table.receive(claimBy(a!, { id: id(3), epoch: 1 })), 'rejected', 'an older epoch')
  assert.equal(table.receive(Uint8Array.of(1, 2, 3)), 'rejected')
  assert.deepEqual(rejected, { 'untrusted-signer': 2, 'old-epoch': 1, malformed: 1 })
  assert.equal(counters.rejected, 4)
  assert.equal(table.receive(claimBy(b!, { id: id(4), scope: 'main', epoch: 2 }, writer)), 'added', 'b\'s claim signed by the trusted writer key counts')
  assert.equal(table.receive(claimBy(a!, { id: id(5), epoch: 2 })), 'added')
  assert.equal(table.size, 2)
})

test('simultaneous fresh claims: the lowest id wins; a claim already renewed beats any fresh one', async (t) => {
  const [me, a, b, c] = await peers(t, 4)
  const { table } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(b!, { id: id(9) }))
  table.receive(claimBy(a!, { id: id(4) }))
  assert.equal(table.winner(KEY.toString())?.claim.claimant, a!.peerId)
  table.receive(claimBy(c!, { id: id(7), seq: 2 }))
  assert.equal(table.winner(KEY.toString())?.claim.claimant, c!.peerId, 'an established build is not displaced')
  assert.deepEqual(table.live(KEY.toString()).map((l) => l.id), [hex(7), hex(4), hex(9)])
  assert.ok(beats(table.get(hex(4))!, table.get(hex(9))!))
  assert.ok(!beats(table.get(hex(9))!, table.get(hex(4))!))
})

test('a claim its node says it granted beats a fresh one with a lower id, whether learned with that mark or marked later', async (t) => {
  const [me, a, b, c] = await peers(t, 4)
  const { table } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(2) }))
  table.receive(claimBy(b!, { id: id(8) }), { decided: true })
  assert.equal(table.winner(KEY.toString())?.claim.claimant, b!.peerId)
  table.receive(claimBy(c!, { id: id(9) }))
  table.receive(claimBy(c!, { id: id(9) }), { decided: true })
  assert.deepEqual(table.live(KEY.toString()).map((l) => l.id), [hex(8), hex(9), hex(2)], 'granted ones first, each group by id')
})

test('claims count only in the scopes asked for, and on their own key', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(1), scope: 'pr/1' }))
  table.receive(claimBy(a!, { id: id(2), key: OTHER }))
  assert.equal(table.winner(KEY.toString(), ['main', 'default']), undefined)
  assert.equal(table.winner(KEY.toString(), ['pr/1'])?.id, hex(1))
  assert.equal(table.winner(OTHER.toString(), ['default'])?.id, hex(2))
})

test('an answering peer\'s remaining lease caps the lease; this node\'s own claims never come from peers', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table, clock } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(1) }), { remainingMs: 2_000 })
  clock.now += 2_000
  assert.equal(table.live(KEY.toString()).length, 0)
  assert.equal(table.receive(claimBy(me!, { id: id(2) })), 'own')
  assert.equal(table.receive(claimBy(a!, { id: id(3) }), { remainingMs: 0 }), 'stale')
})

test('the table is bounded in claims and in claims per key', async (t) => {
  const [me, ...others] = await peers(t, 5)
  const { table } = tableOf(me!.peerId, undefined, { maxClaims: 3, maxPerKey: 2 })
  assert.equal(table.receive(claimBy(others[0]!, { id: id(1) })), 'added')
  assert.equal(table.receive(claimBy(others[1]!, { id: id(2) })), 'added')
  assert.equal(table.receive(claimBy(others[2]!, { id: id(3) })), 'full', 'a third claim on one key')
  assert.equal(table.receive(claimBy(others[2]!, { id: id(4), key: OTHER })), 'added')
  assert.equal(table.receive(claimBy(others[3]!, { id: id(5), key: OTHER })), 'full', 'a fourth claim in all')
  // Renewals of claims already held are never refused.
  assert.equal(table.receive(claimBy(others[0]!, { id: id(1), seq: 1 })), 'renewed')
})

test('a message that reuses a live claim\'s id for another key is refused', async (t) => {
  const [me, a] = await peers(t, 2)
  const { table } = tableOf(me!.peerId, undefined)
  table.receive(claimBy(a!, { id: id(1) }))
  assert.equal(table.receive(claimBy(a!, { id: id(1), key: OTHER, seq: 1 })), 'rejected')
  assert.equal(table.get(hex(1))!.key, KEY.toString())
})
