import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { memoryLogger, tempDir } from '@strata/testing'
import { createDaemon, connectDaemon } from '../src/index.ts'
import { bytes, startDaemon, writeFixedTree } from './helpers.ts'

const bin = join(import.meta.dirname, '..', '..', 'cli', 'bin', 'strata.js')

/** Runs the CLI without blocking this process, which serves the daemon it talks to. */
async function strata (args: string[]): Promise<{ status: number | null, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr })
    })
  })
}

test('a second daemon on the same data dir refuses with a clear message, and the first keeps serving', async (t) => {
  const first = await startDaemon(t)
  await assert.rejects(createDaemon({ dataDir: first.dataDir, listen: ['/ip4/127.0.0.1/tcp/0'] }), {
    code: 'ERR_STORE_LOCKED',
    message: `another strata process is using the store at ${first.dataDir}`
  })
  const cli = await strata(['daemon', '--data-dir', first.dataDir, '--listen', '/ip4/127.0.0.1/tcp/0'])
  assert.equal(cli.status, 1)
  assert.match(cli.stderr, /^strata daemon: another strata process is using the store at .* \(ERR_STORE_LOCKED\)$/m)
  const client = await connectDaemon(first.dataDir)
  assert.ok(client !== undefined, 'the first daemon\'s control socket is gone')
  try {
    assert.equal((await client.status({ copies: false })).peerId, first.peerId)
  } finally {
    await client.close()
  }
})

test('the daemon budget removes the least recently used layer after a commit, logging a last copy; strata gc asks the daemon', async (t) => {
  const { logger, lines } = memoryLogger()
  const dir = tempDir(t)
  const size = 200_000
  const daemon = await startDaemon(t, { logger, gc: { maxSize: size, hardLimit: size } })
  writeFixedTree(`${dir}/one`, { f: bytes('one', size) })
  writeFixedTree(`${dir}/two`, { f: bytes('two', size) })
  const one = await daemon.commit(`${dir}/one`)
  await daemon.budget!.idle()
  assert.equal(await daemon.store.has(one.root), true, 'a store within its budget lost a layer')
  const two = await daemon.commit(`${dir}/two`)
  await daemon.budget!.idle()
  assert.equal(await daemon.store.has(one.root), false, 'the least recently used layer is still there')
  assert.equal(await daemon.store.has(two.root), true)
  const warned = lines.find((l) => l.event === 'last-copy-removed')
  assert.equal(warned?.layer, one.root.toString())
  // strata gc goes through the daemon that holds the store.
  const cli = await strata(['gc', '--data-dir', daemon.dataDir, '--max-size', '0', '--dry-run', '--json'])
  assert.equal(cli.status, 0, cli.stderr)
  const report = JSON.parse(cli.stdout) as { dryRun: boolean, removed: unknown[], kept: Array<{ root: string, reason: string }> }
  assert.equal(report.dryRun, true)
  assert.deepEqual(report.removed, [])
  assert.deepEqual(report.kept.map((k) => k.root), [two.root.toString()])
  const bad = await strata(['gc', '--data-dir', daemon.dataDir, '--max-size', '12 parsecs'])
  assert.equal(bad.status, 2)
  assert.match(bad.stderr, /--max-size: "12 parsecs" is not a size/)
})
