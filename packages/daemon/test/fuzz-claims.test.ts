import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import { CLAIM_FORMAT, ClaimInvalidError, MAX_CLAIM_SIZE, TrustPolicy, loadIdentity, openClaim, signClaim } from '@strata/records'
import type { StepClaim } from '@strata/records'
import { tempDir } from '@strata/testing'
import { ClaimTable } from '../src/claim-table.ts'
import { decodeClaimAnswer, decodeClaimAsk } from '../src/claims.ts'
import { ProtocolViolationError } from '../src/index.ts'

/** Property tests over what a peer can send about claims: only the packages' own errors come out. FUZZ_RUNS raises the number of cases. */
const RUNS = Number(process.env.FUZZ_RUNS ?? 0) || undefined
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined
const params = (n: number): fc.Parameters<unknown> => ({ numRuns: RUNS ?? n, ...(SEED !== undefined ? { seed: SEED } : {}) })

function only (types: Array<new (...a: never[]) => Error>, fn: () => unknown): void {
  try {
    fn()
  } catch (err) {
    if (!types.some((T) => err instanceof T)) throw new Error(`untyped error: ${String(err)}`, { cause: err })
  }
}

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const mutate = (bytes: Uint8Array) => fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.option(fc.nat(), { nil: undefined }))
  .map(([flips, cut]) => {
    const out = Buffer.from(bytes)
    for (const [at, v] of flips) out[at % out.length] = v
    return cut !== undefined ? out.subarray(0, cut % (out.length + 1)) : out
  })

test('a claim opens only as signed: random and mutated envelopes throw ClaimInvalidError or open to the very claim signed', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const claim: StepClaim = { v: CLAIM_FORMAT, key: KEY, claimant: me.peerId, writer: null, scope: 'main', epoch: 0, id: new Uint8Array(16).fill(3), leaseMs: 10_000, seq: 7, release: false }
  const signed = signClaim(claim, me)
  const policy = new TrustPolicy(me.peerId, undefined)
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: MAX_CLAIM_SIZE + 16 }), mutate(signed)), (bytes) => {
    only([ClaimInvalidError], () => {
      const opened = openClaim(bytes, policy)
      assert.deepEqual({ ...opened, id: Buffer.from(opened.id), key: opened.key.toString() }, { ...claim, id: Buffer.from(claim.id), key: KEY.toString() })
    })
  }), params(2000))
})

test('the claim table refuses what does not open, and never throws on it', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const peer = await loadIdentity(tempDir(t))
  const signed = signClaim({ v: CLAIM_FORMAT, key: KEY, claimant: peer.peerId, writer: null, scope: 'main', epoch: 0, id: new Uint8Array(16).fill(3), leaseMs: 10_000, seq: 0, release: false }, peer)
  const table = new ClaimTable({ now: () => 0, ended: () => {}, logger: pino({ level: 'silent' }) }, {
    trust: new TrustPolicy(me.peerId, undefined), self: me.peerId, counters: { granted: 0, held: 0, expired: 0, rejected: 0 }, rejected: {}
  })
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 4096 }), mutate(signed)), (bytes) => {
    assert.ok(['rejected', 'added', 'stale'].includes(table.receive(bytes)))
  }), params(1000))
})

test('the direct ask\'s request and answer decoders throw only ProtocolViolationError, and what decodes is within the limits', () => {
  const answer = fc.array(fc.record({ envelope: fc.uint8Array({ maxLength: MAX_CLAIM_SIZE + 8 }), remainingMs: fc.integer({ min: -5, max: 70_000 }), decided: fc.oneof(fc.boolean(), fc.integer()) }, { requiredKeys: ['envelope', 'remainingMs'] }), { maxLength: 20 }).map((claims) => dagCbor.encode({ claims }))
  const ask = fc.record({ key: fc.constant(KEY), claim: fc.oneof(fc.uint8Array({ maxLength: MAX_CLAIM_SIZE + 8 }), fc.string()) }, { requiredKeys: ['key'] }).map((m) => dagCbor.encode(m))
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 1024 }), answer, ask, fc.constant(dagCbor.encode({ key: KEY }))), (bytes) => {
    only([ProtocolViolationError], () => {
      const got = decodeClaimAsk(bytes)
      assert.ok(got.claim === undefined || got.claim.length <= MAX_CLAIM_SIZE)
    })
    only([ProtocolViolationError], () => {
      const got = decodeClaimAnswer(bytes)
      assert.ok(got.length <= 16)
      for (const c of got) assert.ok(c.envelope.length <= MAX_CLAIM_SIZE && c.remainingMs >= 0 && c.remainingMs <= 60_000 && typeof c.decided === 'boolean')
    })
  }), params(2000))
  assert.equal(decodeClaimAsk(dagCbor.encode({ key: KEY })).key.toString(), KEY.toString())
})
