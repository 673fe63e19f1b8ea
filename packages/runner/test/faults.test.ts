import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import { openStore } from '@strata/store'
import type { LocalStore, Store } from '@strata/store'
import { Sink, tempDir, until, writeTree } from '@strata/testing'
import { createRunner } from '../src/index.ts'
import type { RemoteCache, RunnerEvent } from '../src/index.ts'
import { harness, pipelineIn, SIDE_ROOT, sideChannel, statuses } from './helpers.ts'

/**
 * Runs `fn` with a tmpfs of `size` mounted on a new dir under /var/tmp, then
 * unmounts and removes it (also when `fn` fails; `fn` closes what it opened there).
 */
async function withSmallDisk (size: string, fn: (mnt: string) => Promise<void>): Promise<void> {
  const mnt = mkdtempSync('/var/tmp/strata-disk-')
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', mnt])
    try {
      await fn(mnt)
    } finally {
      execFileSync('umount', [mnt])
    }
  } finally {
    rmSync(mnt, { recursive: true, force: true })
  }
}

async function runnerOn (store: Store & LocalStore, out: Sink, remote?: RemoteCache): Promise<Awaited<ReturnType<typeof createRunner>>> {
  return await createRunner({ store, output: { stdout: out, stderr: out, prefix: true }, killGraceMs: 2000, shared: [SIDE_ROOT], ...(remote !== undefined ? { remote } : {}) })
}

for (const [damage, harm, expect] of [
  ['garbage in every file', (index: string) => { for (const f of readdirSync(index)) if (f !== 'LOCK') writeFileSync(`${index}/${f}`, 'garbage '.repeat(64)) }, 'ran'],
  ['its CURRENT file deleted', (index: string) => rmSync(`${index}/CURRENT`), 'hit']
] as const) {
  test(`after the store index is damaged (${damage}) a run still works: every step hits or reruns, never wrongly`, async (t) => {
    const root = tempDir(t)
    const side = sideChannel(t)
    const data = `${root}/data`
    const p = pipelineIn(`${root}/proj`, `base: host
steps:
  - name: make
    run: echo make >> ${side.dir}/ran; mkdir -p /opt/strata-fault && echo made > /opt/strata-fault/out
  - name: use
    run: echo use >> ${side.dir}/ran; test "$(cat /opt/strata-fault/out)" = made && cp /opt/strata-fault/out /opt/strata-fault/copy
`)
    const out = new Sink()
    let store = await openStore({ dataDir: data })
    await (await runnerOn(store, out)).run(p)
    await store.close()
    harm(`${data}/index`)
    store = await openStore({ dataDir: data })
    t.after(() => store.close())
    const events: RunnerEvent[] = []
    const runner = await runnerOn(store, out)
    await runner.run(p, { onEvent: (e) => events.push(e) })
    assert.deepEqual(statuses(events), expect === 'ran' ? ['make:ran', 'use:ran'] : ['make:hit', 'use:hit'])
    assert.deepEqual(side.lines(), expect === 'ran' ? ['make', 'use', 'make', 'use'] : ['make', 'use'])
    // The cache works again: the next run hits everything.
    events.length = 0
    await runner.run(p, { onEvent: (e) => events.push(e) })
    assert.deepEqual(statuses(events), ['make:hit', 'use:hit'])
  })
}

test('a capture that fills the disk does not fail the step: caching goes off, later steps see its changes and write on scratch space elsewhere, nothing is left behind', async (t) => {
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: fill
    run: |
      mkdir -p /opt/strata-full
      for i in $(seq 300); do echo "$i" > /opt/strata-full/f$i; done
      dd if=/dev/zero of=/opt/strata-full/fill bs=64k 2>/dev/null || true
      echo filled >> ${side.dir}/ran
  - name: after
    run: test "$(cat /opt/strata-full/f300)" = 300 && echo written > /opt/strata-full/new && echo after >> ${side.dir}/ran
  - name: last
    run: test "$(cat /opt/strata-full/new)" = written && echo last >> ${side.dir}/ran
`)
  await withSmallDisk('24m', async (disk) => {
    const store = await openStore({ dataDir: `${disk}/data` })
    try {
      const events: RunnerEvent[] = []
      const result = await (await runnerOn(store, new Sink())).run(p, { onEvent: (e) => events.push(e) })
      assert.deepEqual(side.lines(), ['filled', 'after', 'last'])
      assert.deepEqual(result.steps.map((s) => s.status), ['ran', 'ran', 'ran'])
      const failed = events.find((e) => e.type === 'capture-failed')
      assert.ok(failed !== undefined && failed.step === 'fill', 'no capture-failed event for the step that filled the disk')
      assert.equal((failed.error as Error & { code?: string }).code, 'ERR_COMMIT')
      assert.equal(result.steps[0]!.layer, '')
      // Once, at the step that found the disk full; the steps after it look nothing up and commit nothing.
      assert.deepEqual(events.filter((e) => e.type === 'cache-off').map((e) => [e.step, (e.error as Error & { code?: string }).code]), [['fill', 'ERR_DISK_FULL']])
      assert.deepEqual(events.filter((e) => e.type === 'miss').map((e) => e.reason), ['no-record', 'cache-off', 'cache-off'])
      assert.deepEqual(events.filter((e) => e.type === 'captured' || e.type === 'capture-failed').map((e) => `${e.step}:${e.type}`), ['fill:capture-failed'])
      assert.deepEqual(readdirSync(`${disk}/data/staging`), [])
      assert.deepEqual(readdirSync(`${disk}/data/runner/run`), [], 'the kept upper dir outlived the run')
      assert.deepEqual(readdirSync(`${disk}/data/layers`).sort(), (await store.listLayers()).map((l) => l.root.toString()).sort())
    } finally {
      await store.close()
    }
  })
})

test('a fetch that fills the disk falls back to running the step', async (t) => {
  const side = sideChannel(t)
  const scratch = tempDir(t)
  const producer = await openStore({ dataDir: `${scratch}/producer` })
  t.after(() => producer.close())
  writeTree(`${scratch}/big`, { 'a.bin': randomBytes(3 << 20).toString('latin1'), 'b.bin': randomBytes(3 << 20).toString('latin1') })
  const big = await producer.commit(`${scratch}/big`)
  const p = pipelineIn(`${scratch}/proj`, `base: host
steps:
  - name: small
    run: echo ran >> ${side.dir}/ran
`)
  await withSmallDisk('4m', async (disk) => {
    const store = await openStore({ dataDir: `${disk}/data` })
    try {
      let fetchError: Error | undefined
      // The fleet as the daemon serves it: restore the layer into this store (here it does not fit).
      const remote: RemoteCache = {
        resolve: async () => {
          try {
            await store.restore(big.root, producer)
          } catch (err) {
            fetchError = err as Error
            throw err
          }
          throw new Error('the restore should not fit')
        },
        trusts: () => true
      }
      const result = await (await runnerOn(store, new Sink(), remote)).run(p)
      assert.equal((fetchError as Error & { code?: string } | undefined)?.code, 'ERR_COMMIT')
      assert.match(fetchError!.message, /ENOSPC/)
      assert.deepEqual(side.lines(), ['ran'])
      assert.equal(result.steps[0]!.status, 'ran')
      assert.deepEqual(readdirSync(`${disk}/data/staging`), [])
      assert.equal(await store.has(big.root), false)
    } finally {
      await store.close()
    }
  })
})

test('GC while a step runs keeps the layers it mounts; once the run ends they can go', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: below
    run: mkdir -p /opt/strata-gc && echo one > /opt/strata-gc/one
  - name: wait
    run: |
      echo waiting >> ${side.dir}/ran
      while [ ! -e ${side.dir}/go ]; do sleep 0.05; done
      cat /opt/strata-gc/one >> ${side.dir}/seen
`)
  const running = h.runner.run(p, { onEvent: h.onEvent })
  await until('the step to print waiting', () => side.lines().includes('waiting'))
  const below = h.events.find((e) => e.type === 'captured' && e.step === 'below') as Extract<RunnerEvent, { type: 'captured' }>
  const report = await h.store.gc({ maxSize: 0, graceMs: 0 })
  writeFileSync(`${side.dir}/go`, '')
  await running
  assert.deepEqual(report.removed, [])
  assert.deepEqual(report.kept.map((k) => [k.root, k.reason]), [[below.layer, 'leased']])
  assert.deepEqual(side.lines('seen'), ['one'])
  // The wait step changed no file: its layer is empty and weighs nothing.
  const after = await h.store.gc({ maxSize: 0, graceMs: 0 })
  assert.deepEqual(after.removed.map((r) => r.root), [below.layer])
  assert.equal(await h.store.has(CID.parse(below.layer)), false)
})
