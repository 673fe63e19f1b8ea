import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { test } from 'node:test'
import { IDENTITY_FILE, loadIdentity } from '@strata/records'
import { tempDir } from '@strata/testing'
import { createDaemon, loadPrivateKey } from '../src/index.ts'

test('the libp2p key is the identity the runner signs with', async (t) => {
  const dir = tempDir(t)
  const key = await loadPrivateKey(dir)
  const identity = await loadIdentity(dir)
  assert.equal(key.publicKey.toString(), identity.peerId)
  assert.deepEqual(key.publicKey.raw, identity.publicKey)
})

test('an unusable identity file stops the daemon with ERR_IDENTITY, the runner\'s error', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/${IDENTITY_FILE}`, 'not a key', { mode: 0o600 })
  await assert.rejects(loadPrivateKey(dir), { name: 'IdentityError', code: 'ERR_IDENTITY' })
  await assert.rejects(createDaemon({ dataDir: dir, listen: ['/ip4/127.0.0.1/tcp/0'] }), { name: 'IdentityError', code: 'ERR_IDENTITY' })
})
