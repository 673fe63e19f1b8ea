import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, openSync, writeSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { openStore } from '@strata/store'
import { memoryLogger, tempDir, until } from '@strata/testing'
import { createScrubber } from '../src/scrub.ts'
import { startDaemon, writeFixedTree } from './helpers.ts'

const text = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} ${i}\n`).join('')

function overwrite (path: string, offset: number, byte: string): void {
  const fd = openSync(path, 'r+')
  try {
    writeSync(fd, byte, offset)
  } finally {
    closeSync(fd)
  }
}

test('a scrub pass finds a layer with a changed byte, marks it, logs and counts it; the next pass does not report it again', async (t) => {
  const dir = tempDir(t)
  const store = await openStore({ dataDir: `${dir}/data` })
  t.after(() => store.close())
  writeFixedTree(`${dir}/a`, { 'big.bin': text('a', 50_000), 'small': 'x' })
  writeFixedTree(`${dir}/b`, { 'lib.so': text('b', 50_000) })
  const a = await store.commit(`${dir}/a`)
  const b = await store.commit(`${dir}/b`)
  overwrite(`${b.path}/lib.so`, 123_456, '#')
  const { logger, lines } = memoryLogger()
  const scrub = createScrubber({ store, logger }, { bytesPerSecond: 1_000_000_000 })
  const pass = await scrub.pass()
  assert.equal(pass.layers, 2)
  assert.deepEqual(pass.corrupt, [b.root.toString()])
  assert.equal((await store.checkLayer(b.root)).status, 'corrupt', 'the scrub marked it in the store')
  assert.equal((await store.checkLayer(a.root)).status, 'ok')
  assert.equal(scrub.counters.corrupt, 1)
  assert.ok(lines.some((l) => l.event === 'layer-corrupt' && l.layer === b.root.toString() && l.path === 'lib.so' && l.component === 'scrub'))
  const again = await scrub.pass()
  assert.deepEqual(again.corrupt, [])
  assert.equal(scrub.counters.corrupt, 1)
  assert.equal(scrub.counters.passes, 2)
})

test('a scrub pass reads at most its rate: a slow scrub is stopped mid-pass by its signal', async (t) => {
  const dir = tempDir(t)
  const store = await openStore({ dataDir: `${dir}/data` })
  t.after(() => store.close())
  writeFixedTree(`${dir}/a`, { 'one': text('one', 50_000), 'two': text('two', 50_000) })
  await store.commit(`${dir}/a`)
  // One byte a second: the first file's read has to wait far longer than this test runs.
  const scrub = createScrubber({ store, logger: memoryLogger().logger }, { bytesPerSecond: 1 })
  const stop = new AbortController()
  const pass = scrub.pass({ signal: stop.signal })
  await sleep(50)
  stop.abort(new Error('enough'))
  await assert.rejects(pass, { name: 'AbortError' })
  assert.equal(scrub.counters.bytes, 0, 'the pass was still waiting after its first file')
  assert.equal(scrub.counters.passes, 0)
})

test('the daemon scrubs in the background and counts what it found in its metrics; rate 0 turns it off', async (t) => {
  const daemon = await startDaemon(t, { scrub: { bytesPerSecond: 1_000_000_000, delayMs: 0, intervalMs: 3_600_000 }, metricsListen: '127.0.0.1:0' })
  // The first background pass, over an empty store, starts at once.
  await until('a scrub pass', () => daemon.scrub.counters.passes > 0, { everyMs: 10 })
  const src = tempDir(t)
  writeFixedTree(`${src}/tree`, { 'f': text('f', 20_000) })
  const layer = await daemon.store.commit(`${src}/tree`)
  overwrite(`${layer.path}/f`, 10, '#')
  await daemon.scrub.pass()
  assert.equal((await daemon.store.checkLayer(layer.root)).status, 'corrupt')
  const metrics = await (await fetch(`http://127.0.0.1:${daemon.metricsPort!}/metrics`)).text()
  assert.match(metrics, /^strata_layers_corrupt_found_total 1$/m)

  const off = await startDaemon(t, { scrub: { bytesPerSecond: 0 } })
  assert.equal(off.scrub.rate, 0)
  await assert.rejects(off.scrub.pass(), TypeError)
})

const bin = join(import.meta.dirname, '..', '..', 'cli', 'bin', 'strata.js')

/** Runs the CLI without blocking this process, which serves the daemon it talks to. */
async function strata (args: string[]): Promise<{ status: number | null, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr })
    })
  })
}

test('strata verify goes through a running daemon, which marks the corrupt layer in its store', async (t) => {
  const daemon = await startDaemon(t, { scrub: { bytesPerSecond: 0 } })
  const src = tempDir(t)
  writeFixedTree(`${src}/a`, { 'f': text('f', 20_000) })
  writeFixedTree(`${src}/b`, { 'g': text('g', 20_000) })
  const a = await daemon.store.commit(`${src}/a`)
  const b = await daemon.store.commit(`${src}/b`)
  overwrite(`${b.path}/g`, 99, '#')
  const out = await strata(['verify', '--data-dir', daemon.dataDir])
  assert.equal(out.status, 1, out.stderr)
  assert.match(out.stdout, new RegExp(`^${a.root.toString()}  ok `, 'm'))
  assert.match(out.stdout, new RegExp(`^${b.root.toString()}  corrupt: content: g$`, 'm'))
  assert.equal((await daemon.store.checkLayer(b.root)).status, 'corrupt')
  const one = await strata(['verify', a.root.toString(), '--data-dir', daemon.dataDir, '--json'])
  assert.equal(one.status, 0, one.stderr)
  assert.equal(JSON.parse(one.stdout).status, 'ok')
})
