import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { tempDir } from '@strata/testing'
import { decodeDescriptor } from '../src/index.ts'
import { descriptorKey } from '../src/slots.ts'
import { CID } from 'multiformats/cid'
import { harness } from './helpers.ts'

test('the fleet salt keys the input digests: the same salt shares keys, another salt or none misses, and no descriptor holds a salt in clear', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t, 'strata-yaml-salt-')
  writeFileSync(`${proj}/secret.txt`, 'pin=4711\n')
  const step = { name: 'read', run: 'cat secret.txt > /dev/null', cwd: proj, inputs: ['secret.txt'], env: [{ name: 'MODE', value: 'fast' }], salt: 'pipeline-salt-in-the-repo' }
  const fleet = await h.reopen({ salt: 'fleet-secret-a1b2c3' })
  const first = await fleet.exec(step)
  assert.equal(first.status, 'ran')
  const again = await (await h.reopen({ salt: 'fleet-secret-a1b2c3' })).exec(step)
  assert.deepEqual([again.status, again.key], ['hit', first.key], 'a VM with the same fleet salt hits')
  const other = await (await h.reopen({ salt: 'fleet-secret-a1b2c4' })).exec(step)
  const none = await h.runner.exec(step)
  assert.equal(new Set([first.key, other.key, none.key]).size, 3)

  const bytes = await h.store.getRecord(descriptorKey(first.key))
  assert.ok(bytes !== undefined)
  const text = Buffer.from(bytes).toString('latin1')
  for (const secret of ['fleet-secret-a1b2c3', 'pipeline-salt-in-the-repo', 'pin=4711', 'fast']) assert.ok(!text.includes(secret), `${secret} is not in the descriptor`)
  const d = await decodeDescriptor(CID.parse(first.key), bytes)
  assert.ok(d?.salt instanceof Uint8Array && d.salt.length === 32)
})
