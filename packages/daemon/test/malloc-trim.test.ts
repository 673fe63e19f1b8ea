import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { test } from 'node:test'
import { MallocTrimmer } from '../src/malloc-trim.ts'

test('the trimmer trims when malloc holds enough free, and counts what it did', () => {
  let free = 0
  const trims: number[] = []
  const t = new MallocTrimmer({ freeBytes: 1000, free: () => free, trim: () => { trims.push(free); return free > 5000 }, enabled: true })
  assert.equal(t.active, true)
  t.check()
  free = 999
  t.check()
  assert.deepEqual(trims, [])
  free = 1000
  t.check()
  free = 9000
  t.check()
  assert.deepEqual(trims, [1000, 9000])
  assert.equal(t.counters.runs, 2)
  assert.equal(t.counters.released, 1)
  assert.ok(t.counters.ms >= 0)
  assert.throws(() => new MallocTrimmer({ everyMs: 0 }), /everyMs must be a positive number of milliseconds, got 0/)
})

test('STRATA_MALLOC_TRIM=off turns the trimmer off', () => {
  const check = (env: NodeJS.ProcessEnv): boolean => {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
      import { MallocTrimmer } from ${JSON.stringify(new URL('../src/malloc-trim.ts', import.meta.url).href)}
      console.log(new MallocTrimmer().active)
    `], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 })
    assert.equal(r.status, 0, r.stderr)
    return JSON.parse(r.stdout) as boolean
  }
  // On this glibc machine the default trimmer is active: the build has the calls.
  assert.equal(check({ STRATA_MALLOC_TRIM: undefined }), true)
  assert.equal(check({ STRATA_MALLOC_TRIM: 'off' }), false)
  const off = new MallocTrimmer({ enabled: false, free: () => 1e12, trim: () => { throw new Error('trimmed while off') } })
  assert.equal(off.active, false)
  off.check()
  assert.equal(off.counters.runs, 0)
})
