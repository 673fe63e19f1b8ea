import assert from 'node:assert/strict'
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { test } from 'node:test'
import { tempDir } from '@strata/testing'
import { IDENTITY_FILE, IdentityError, loadIdentity, peerIdFromPublicKey, verifySignature } from '../src/index.ts'

// DER PKCS#8 header of an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')

test('the seed rebuilds the same key: what another library derives from it signs as the identity', async (t) => {
  const me = await loadIdentity(tempDir(t))
  const seed = me.seed()
  assert.equal(seed.length, 32)
  const rebuilt = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' })
  const der = createPublicKey(rebuilt).export({ type: 'spki', format: 'der' })
  assert.equal(peerIdFromPublicKey(new Uint8Array(der.subarray(der.length - 32))), me.peerId)
  const data = Buffer.from('strata')
  assert.ok(verifySignature(me.publicKey, data, me.sign(data)))
  seed.fill(0)
  assert.notDeepEqual(me.seed(), seed, 'each call hands out a copy')
})

test('an identity file that is not an ed25519 key is an IdentityError naming the file', async (t) => {
  const dir = tempDir(t)
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  writeFileSync(`${dir}/${IDENTITY_FILE}`, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 })
  await assert.rejects(loadIdentity(dir), (err: unknown) => {
    assert.ok(err instanceof IdentityError)
    assert.equal(err.code, 'ERR_IDENTITY')
    assert.equal(err.path, `${dir}/${IDENTITY_FILE}`)
    assert.match(err.message, /not ed25519/)
    return true
  })
  writeFileSync(`${dir}/${IDENTITY_FILE}`, 'not a key')
  await assert.rejects(loadIdentity(dir), { name: 'IdentityError', code: 'ERR_IDENTITY' })
})
