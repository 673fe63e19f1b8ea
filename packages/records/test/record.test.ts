import { test } from 'node:test'
import assert from 'node:assert/strict'
import { statSync } from 'node:fs'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { tempDir } from '@strata/testing'
import { checkScope, loadIdentity, openRecord, parseWriter, writerTrust, publicKeyFromPeerId, RECORD_DOMAIN, RECORD_FORMAT, recordKey, signRecord, signedBytes } from '../src/index.ts'
import type { Identity, RecordPolicy, StepRecord } from '../src/index.ts'

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const LAYER = CID.parse('bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q')

const trusting = (...peers: string[]): RecordPolicy => ({ trusts: (p) => peers.includes(p) })

function recordOf (me: Identity, over: Partial<StepRecord> = {}): StepRecord {
  return { v: RECORD_FORMAT, key: KEY, parent: null, layer: LAYER, size: 5, env: ['A=1'], created: 1, producer: me.peerId, scope: 'main', epoch: 3, writer: null, ...over }
}

/** An envelope whose body is `body` as given (any shape) and whose signature is `sign`'s over it. */
function envelopeOf (body: unknown, sig: Uint8Array | undefined): Uint8Array {
  const b = dagCbor.encode(body)
  return dagCbor.encode(sig === undefined ? { body: b } : { body: b, sig })
}

test('the identity is created once, kept 0600, and its peer id carries the public key', async (t) => {
  const dir = tempDir(t)
  const [a, b] = await Promise.all([loadIdentity(dir), loadIdentity(dir)])
  assert.equal(a.peerId, b.peerId, 'racing creators agree on one key')
  assert.match(a.peerId, /^12D3KooW/)
  assert.equal(statSync(`${dir}/identity.key`).mode & 0o777, 0o600)
  assert.deepEqual(publicKeyFromPeerId(a.peerId), a.publicKey)
  assert.equal((await loadIdentity(dir)).peerId, a.peerId)
})

test('the signature covers the domain string and the canonical body, nothing else', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const record = recordOf(me)
  const env = dagCbor.decode<{ body: Uint8Array, sig: Uint8Array }>(signRecord(record, me))
  assert.deepEqual(Buffer.from(env.body), Buffer.from(dagCbor.encode(record)))
  const expected = Buffer.concat([Buffer.from('strata/record/v3\n'), dagCbor.encode(record)])
  assert.deepEqual(Buffer.from(signedBytes(env.body)), expected)
  assert.equal(RECORD_DOMAIN, 'strata/record/v3\n')
  // ed25519 is deterministic: signing the documented bytes by hand gives the same signature.
  assert.deepEqual(Buffer.from(env.sig), Buffer.from(me.sign(expected)))
  assert.equal(recordKey(KEY, 'pr/123'), `runner/record/${KEY.toString()}/pr/123`)
})

test('a record verifies with a good signature, a trusted signer, the right key, epoch and scope', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const record = recordOf(me)
  const bytes = signRecord(record, me)
  assert.deepEqual(openRecord(KEY, bytes, trusting(me.peerId)), record)
  assert.deepEqual(openRecord(KEY, bytes, { ...trusting(me.peerId), epoch: 3, scopes: ['pr/1', 'main'] }), record)
  assert.deepEqual(openRecord(KEY, bytes, { ...trusting(me.peerId), epoch: 2 }), record, 'a later epoch than the reader\'s is accepted')
})

test('each refused record says why, with a stable reason', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const other = await loadIdentity(tempDir(t))
  const record = recordOf(me)
  const bytes = signRecord(record, me)
  const { sig } = dagCbor.decode<{ body: Uint8Array, sig: Uint8Array }>(bytes)
  const refused = (reason: string, fn: () => unknown): void => {
    assert.throws(fn, (err: Error & { code?: string, reason?: string }) => {
      assert.equal(err.code, 'ERR_RECORD_INVALID')
      assert.equal(err.reason, reason, err.message)
      assert.ok(err.message.includes(`(${reason})`))
      return true
    })
  }
  const all = trusting(me.peerId, other.peerId)

  refused('malformed', () => openRecord(KEY, new Uint8Array([1, 2, 3]), all))
  refused('malformed', () => openRecord(KEY, dagCbor.encode({ sig }), all))
  refused('unsigned', () => openRecord(KEY, envelopeOf(record, undefined), all))
  refused('unsigned', () => openRecord(KEY, envelopeOf(record, new Uint8Array(0)), all))
  refused('untrusted-signer', () => openRecord(KEY, bytes, trusting(other.peerId)))
  refused('wrong-key', () => openRecord(LAYER, bytes, all))
  refused('old-epoch', () => openRecord(KEY, bytes, { ...all, epoch: 4 }))
  refused('wrong-scope', () => openRecord(KEY, bytes, { ...all, scopes: ['pr/123'] }))

  // The signature over one record does not carry over to another key, layer, scope, epoch or env.
  for (const change of [{ key: LAYER }, { layer: KEY }, { scope: 'pr/9' }, { epoch: 9 }, { env: ['A=2'] }, { parent: KEY }]) {
    refused('bad-signature', () => openRecord(CID.asCID(change.key) ?? KEY, envelopeOf({ ...record, ...change }, sig), all))
  }
  // Nor to another signer: the claimed producer's key does not verify it.
  refused('bad-signature', () => openRecord(KEY, envelopeOf({ ...record, producer: other.peerId }, sig), all))
  // A signature over the same body without the domain string is refused.
  refused('bad-signature', () => openRecord(KEY, envelopeOf(record, me.sign(dagCbor.encode(record))), all))

  // Format 1 (no scope, no epoch, domain v1) is refused by version, before its signature is looked at.
  const v1 = { v: 1, key: KEY, parent: null, layer: LAYER, size: 5, env: [], created: 1, producer: me.peerId }
  const v1sig = me.sign(Buffer.concat([Buffer.from('strata/record/v1\n'), dagCbor.encode(v1)]))
  refused('version', () => openRecord(KEY, envelopeOf(v1, v1sig), all))
})

test('a record whose env exec would refuse is never accepted: too large a variable or in all, or not NAME=value', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const policy = trusting(me.peerId)
  const open = (env: string[]): StepRecord => openRecord(KEY, signRecord(recordOf(me, { env }), me), policy)
  const refused = (reason: string, env: string[], names?: string): void => {
    assert.throws(() => open(env), (err: Error & { reason?: string }) => {
      assert.equal(err.reason, reason, err.message)
      if (names !== undefined) assert.ok(err.message.includes(names), err.message)
      return true
    })
  }
  // The kernel takes a NAME=value string of up to 131071 bytes (131072 with its NUL).
  const fits = `BIG=${'x'.repeat(131071 - 4)}`
  assert.deepEqual(open([fits]).env, [fits])
  refused('too-large', [`${fits}x`], 'BIG')
  // Ten variables of 120 KB each fit one by one but not together (over 1 MiB).
  refused('too-large', Array.from({ length: 10 }, (_, i) => `V${i}=${'y'.repeat(120_000)}`), 'over the 1048576')
  refused('malformed', ['no equals sign'])
  refused('malformed', ['1BAD=x'])
})

test('signing checks the record it is given', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const other = await loadIdentity(tempDir(t))
  assert.throws(() => signRecord(recordOf(me, { producer: other.peerId }), me), TypeError)
  assert.throws(() => signRecord(recordOf(me, { scope: '../main' }), me), TypeError)
  assert.throws(() => signRecord(recordOf(me, { scope: '' }), me), TypeError)
  assert.throws(() => signRecord(recordOf(me, { epoch: -1 }), me), TypeError)
  assert.throws(() => signRecord(recordOf(me, { epoch: 1.5 }), me), TypeError)
  assert.throws(() => signRecord(recordOf(me, { v: 1 }), me), TypeError)
  for (const ok of ['main', 'pr/123', 'release-1.2', 'feature/a_b+c']) assert.equal(checkScope(ok), ok)
  for (const bad of ['/main', 'main/', 'a//b', 'a b', 'x'.repeat(129), 'a/../b', 'é']) assert.throws(() => checkScope(bad), TypeError, bad)
})

test('trusted-writer entries limit a writer to the scopes its pattern matches', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const trusts = writerTrust(['12D3KooWA', '12D3KooWB@pr/*', '12D3KooWC@release/**'])
  assert.equal(trusts('12D3KooWA', 'main'), true)
  assert.equal(trusts('12D3KooWB', 'pr/12'), true)
  assert.equal(trusts('12D3KooWB', 'main'), false)
  assert.equal(trusts('12D3KooWB', 'pr/12/x'), false, '* stays within one part')
  assert.equal(trusts('12D3KooWC', 'release/1/rc'), true)
  assert.equal(trusts('12D3KooWD', 'main'), false)
  assert.deepEqual(parseWriter('12D3KooWB@pr/*'), { peer: '12D3KooWB', scopes: 'pr/*' })
  for (const bad of ['x@', 'x@pr/', 'x@a b', 'x@../main']) assert.throws(() => parseWriter(bad), TypeError, bad)
  // In a record check, a writer limited to pr/* cannot write main.
  const onMain = signRecord(recordOf(me), me)
  const policy = { trusts: writerTrust([`${me.peerId}@pr/*`]) }
  assert.throws(() => openRecord(KEY, onMain, policy), { reason: 'untrusted-signer', message: /not trusted to write scope main/ })
  assert.equal(openRecord(KEY, signRecord(recordOf(me, { scope: 'pr/4' }), me), policy).scope, 'pr/4')
})
