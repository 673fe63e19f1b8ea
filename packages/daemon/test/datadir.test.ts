import { test } from 'node:test'
import assert from 'node:assert/strict'
import { tempDir } from '@strata/testing'
import { connectDaemon } from '../src/index.ts'
import { startDaemon } from './helpers.ts'

test('a daemon given a relative data dir works in absolute paths: its store, its socket and what it reports', async (t) => {
  const dir = tempDir(t, 'strata-yaml-daemon-')
  const cwd = process.cwd()
  process.chdir(dir)
  let daemon
  try {
    daemon = await startDaemon(t, { dataDir: 'data' })
  } finally {
    process.chdir(cwd)
  }
  assert.equal(daemon.dataDir, `${dir}/data`)
  assert.equal(daemon.store.dataDir, `${dir}/data`)
  const client = await connectDaemon(`${dir}/data`)
  assert.ok(client !== undefined, 'the control socket is where an absolute path finds it')
  try {
    assert.equal((await client.status()).dataDir, `${dir}/data`)
  } finally {
    await client.close()
  }
})
