import { test } from 'node:test'
import assert from 'node:assert/strict'
import { statSync } from 'node:fs'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { loadIdentity, openRecord, publicKeyFromPeerId, RECORD_FORMAT, signRecord } from '../src/index.ts'
import type { StepRecord } from '../src/index.ts'
import { tempDir } from './helpers.ts'

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const LAYER = CID.parse('bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q')

test('the identity is created once, kept 0600, and its peer id carries the public key', async (t) => {
  const dir = tempDir(t)
  const [a, b] = await Promise.all([loadIdentity(dir), loadIdentity(dir)])
  assert.equal(a.peerId, b.peerId, 'racing creators agree on one key')
  assert.match(a.peerId, /^12D3KooW/)
  assert.equal(statSync(`${dir}/identity.key`).mode & 0o777, 0o600)
  assert.deepEqual(publicKeyFromPeerId(a.peerId), a.publicKey)
  assert.equal((await loadIdentity(dir)).peerId, a.peerId)
})

test('records verify only with a good signature, a trusted signer and the right key', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const other = await loadIdentity(tempDir(t))
  const record: StepRecord = { v: RECORD_FORMAT, key: KEY, parent: null, layer: LAYER, size: 5, env: ['A=1'], created: 1, producer: me.peerId }
  const bytes = signRecord(record, me)
  assert.deepEqual(openRecord(KEY, bytes, new Set([me.peerId])), record)
  assert.throws(() => openRecord(KEY, bytes, new Set([other.peerId])), { code: 'ERR_RECORD_INVALID', message: /not trusted/ })
  assert.throws(() => openRecord(LAYER, bytes, new Set([me.peerId])), { message: /another key/ })

  // Tampering with the body breaks the signature.
  const env = dagCbor.decode<{ body: Uint8Array, sig: Uint8Array }>(bytes)
  const forged = dagCbor.encode({ body: dagCbor.encode({ ...record, layer: KEY }), sig: env.sig })
  assert.throws(() => openRecord(KEY, forged, new Set([me.peerId])), { message: /bad signature/ })
  // Claiming another producer does not help either.
  const claimed = dagCbor.encode({ body: dagCbor.encode({ ...record, producer: other.peerId }), sig: env.sig })
  assert.throws(() => openRecord(KEY, claimed, new Set([other.peerId])), { message: /bad signature/ })
  assert.throws(() => openRecord(KEY, new Uint8Array([1, 2, 3]), new Set([me.peerId])), { message: /does not decode/ })
  assert.throws(() => signRecord({ ...record, producer: other.peerId }, me), TypeError)
})
