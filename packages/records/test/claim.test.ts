import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { tempDir } from '@strata/testing'
import {
  CLAIM_DOMAIN, CLAIM_FORMAT, ClaimInvalidError, MAX_CLAIM_SIZE, MAX_LEASE_MS, RECORD_FORMAT, TrustPolicy,
  claimSignedBytes, claimSignerOf, compareClaimIds, generateWriterKey, loadIdentity, openClaim, openRecord, signClaim, signRecord
} from '../src/index.ts'
import type { Identity, RecordPolicy, RecordRejectReason, StepClaim } from '../src/index.ts'

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const OTHER = CID.parse('bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q')

const trusting = (...signers: string[]): RecordPolicy => ({ trusts: (p) => signers.includes(p) })

function claimOf (me: Identity, over: Partial<StepClaim> = {}): StepClaim {
  return { v: CLAIM_FORMAT, key: KEY, claimant: me.peerId, writer: null, scope: 'main', epoch: 3, id: new Uint8Array(16).fill(7), leaseMs: 10_000, seq: 0, release: false, ...over }
}

/** An envelope whose body is `body` as given (any shape), signed by `me` over the claim domain. */
function forged (me: Identity, body: unknown): Uint8Array {
  const b = dagCbor.encode(body)
  return dagCbor.encode({ body: b, sig: me.sign(claimSignedBytes(b)) })
}

const refusal = (reason: RecordRejectReason) => (err: unknown): boolean => err instanceof ClaimInvalidError && err.code === 'ERR_CLAIM_INVALID' && err.reason === reason

test('a claim signed by the node identity opens to the same fields under a policy that trusts it', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const claim = claimOf(me, { seq: 4 })
  const bytes = signClaim(claim, me)
  assert.ok(bytes.length <= MAX_CLAIM_SIZE)
  const opened = openClaim(bytes, trusting(me.peerId), KEY)
  assert.deepEqual({ ...opened, id: Buffer.from(opened.id) }, { ...claim, id: Buffer.from(claim.id) })
  assert.equal(claimSignerOf(opened), me.peerId)
  // The signature covers the claim domain and the canonical body.
  const env = dagCbor.decode<{ body: Uint8Array, sig: Uint8Array }>(bytes)
  assert.deepEqual(Buffer.from(env.sig), Buffer.from(me.sign(Buffer.concat([Buffer.from(CLAIM_DOMAIN), env.body]))))
})

test('a claim signed by a writer key names the claimant peer and is trusted as the writer, in its scopes only', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const { key: writer } = generateWriterKey('ci-main-1')
  const claim = claimOf(me, { writer: writer.id, release: true, seq: 9 })
  const bytes = signClaim(claim, writer)
  const policy = new TrustPolicy('12D3KooWreader', [`${writer.id}@main`])
  const opened = openClaim(bytes, policy)
  assert.equal(opened.claimant, me.peerId)
  assert.equal(opened.release, true)
  assert.equal(claimSignerOf(opened), writer.id)
  const elsewhere = signClaim(claimOf(me, { writer: writer.id, scope: 'pr/1' }), writer)
  assert.throws(() => openClaim(elsewhere, policy), refusal('untrusted-signer'))
  assert.throws(() => openClaim(bytes, trusting(me.peerId)), refusal('untrusted-signer'), 'the claimant\'s identity did not sign it')
})

test('each refused claim says why, with the reasons records use', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const other = await loadIdentity(tempDir(t))
  const good = claimOf(me)
  const policy = { ...trusting(me.peerId), epoch: 3, scopes: ['main'] }
  assert.throws(() => openClaim(signClaim(good, me), trusting(other.peerId)), refusal('untrusted-signer'))
  assert.throws(() => openClaim(signClaim(good, me), policy, OTHER), refusal('wrong-key'))
  assert.throws(() => openClaim(signClaim(claimOf(me, { epoch: 2 }), me), policy), refusal('old-epoch'))
  assert.throws(() => openClaim(signClaim(claimOf(me, { scope: 'pr/1' }), me), policy), refusal('wrong-scope'))
  assert.throws(() => openClaim(Uint8Array.of(1, 2, 3), policy), refusal('malformed'))
  assert.throws(() => openClaim(new Uint8Array(MAX_CLAIM_SIZE + 1), policy), refusal('too-large'))
  assert.throws(() => openClaim(dagCbor.encode({ body: dagCbor.encode(good) }), policy), refusal('unsigned'))
  assert.throws(() => openClaim(forged(me, { ...good, v: 2 }), policy), refusal('version'))
  // Signed by another key than the claimant's.
  assert.throws(() => openClaim(forged(other, good), policy), refusal('bad-signature'))
  // Fields out of range, though signed by the claimant.
  for (const bad of [{ leaseMs: 0 }, { leaseMs: MAX_LEASE_MS + 1 }, { seq: -1 }, { seq: 1.5 }, { id: new Uint8Array(3) }, { release: 'yes' }, { scope: '../x' }, { key: 'not a cid' }]) {
    assert.throws(() => openClaim(forged(me, { ...good, ...bad }), policy), refusal('malformed'), JSON.stringify(bad))
  }
  // A writer-signed claim must still name a peer as its claimant.
  const { key: writer } = generateWriterKey('ci-main-1')
  assert.throws(() => openClaim(forged({ ...me, sign: (d) => writer.sign(d) }, { ...good, writer: writer.id, claimant: 'nobody' }), trusting(writer.id)), refusal('malformed'))
})

test('a claim and a record never pass for each other', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const claim = signClaim(claimOf(me), me)
  assert.throws(() => openRecord(KEY, claim, trusting(me.peerId)))
  const record = signRecord({ v: RECORD_FORMAT, key: KEY, parent: null, layer: OTHER, size: 1, env: [], created: 1, producer: me.peerId, scope: 'main', epoch: 3, writer: null }, me)
  assert.throws(() => openClaim(record, trusting(me.peerId)), refusal('version'))
  // The same body signed under the record domain does not verify as a claim.
  const body = dagCbor.encode(claimOf(me))
  const asRecord = dagCbor.encode({ body, sig: me.sign(Buffer.concat([Buffer.from('strata/record/v3\n'), body])) })
  assert.throws(() => openClaim(asRecord, trusting(me.peerId)), refusal('bad-signature'))
})

test('signClaim refuses a claim that breaks its format or names another signer', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const other = await loadIdentity(tempDir(t))
  assert.throws(() => signClaim(claimOf(other), me), TypeError)
  assert.throws(() => signClaim(claimOf(me, { leaseMs: MAX_LEASE_MS + 1 }), me), TypeError)
  assert.throws(() => signClaim(claimOf(me, { scope: 'a'.repeat(129) }), me), TypeError)
  const { key: writer } = generateWriterKey('ci-main-1')
  assert.throws(() => signClaim(claimOf(me), writer), TypeError, 'a writer-signed claim names its writer')
})

test('claim ids order bytewise', () => {
  assert.ok(compareClaimIds(Uint8Array.of(0, 255), Uint8Array.of(1, 0)) < 0)
  assert.equal(compareClaimIds(Uint8Array.of(5, 5), Uint8Array.of(5, 5)), 0)
})
