import assert from 'node:assert/strict'
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { test } from 'node:test'
import { HugePageGate } from '../src/huge-pages.ts'

// Each case runs in a child: the setting is the whole process's, as the kernel keeps it.
function run (code: string, env: NodeJS.ProcessEnv): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['--input-type=module', '-e', `
    import { readFileSync } from 'node:fs'
    import { HugePageGate } from ${JSON.stringify(new URL('../src/huge-pages.ts', import.meta.url).href)}
    // As the kernel sees it: 1 where huge pages may back this process's memory.
    const thp = () => Number(/^THP_enabled:\\s+(\\d)/m.exec(readFileSync('/proc/self/status', 'utf8'))[1])
    ${code}
  `], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 })
}

function child (code: string, env: NodeJS.ProcessEnv = {}): unknown {
  const r = run(code, env)
  assert.equal(r.status, 0, r.stderr)
  return JSON.parse(r.stdout)
}

test('the gate turns the kernel\'s huge pages off at rest and on while any burst runs', () => {
  const seen = child(`
    const seen = { before: thp() }
    const gate = new HugePageGate()
    gate.start()
    seen.rest = thp()
    let release
    const first = gate.during(() => new Promise((resolve) => { release = resolve }))
    seen.first = thp()
    await gate.during(async () => { seen.both = thp() })
    seen.afterSecond = thp()
    release()
    await first
    seen.afterBoth = thp()
    await gate.during(async () => { throw new Error('the burst failed') }).catch(() => {})
    seen.afterFailure = thp()
    seen.counters = gate.counters
    gate.stop()
    seen.stopped = thp()
    console.log(JSON.stringify(seen))
  `, { STRATA_HUGE_PAGES: undefined }) as Record<string, number | { bursts: number, msOn: number }>
  assert.equal(seen.before, 1)
  assert.equal(seen.rest, 0)
  assert.equal(seen.first, 1)
  assert.equal(seen.both, 1)
  // The first burst still runs: the second's end leaves huge pages on.
  assert.equal(seen.afterSecond, 1)
  assert.equal(seen.afterBoth, 0)
  assert.equal(seen.afterFailure, 0)
  const counters = seen.counters as { bursts: number, msOn: number }
  // Two bursts turned them on: the overlapping one did not.
  assert.equal(counters.bursts, 2)
  assert.ok(counters.msOn > 0)
  assert.equal(seen.stopped, 1)
})

test('STRATA_HUGE_PAGES=always leaves huge pages on', () => {
  const seen = child(`
    const gate = new HugePageGate()
    gate.start()
    const rest = thp()
    await gate.during(async () => {})
    console.log(JSON.stringify({ active: gate.active, rest, after: thp(), bursts: gate.counters.bursts }))
  `, { STRATA_HUGE_PAGES: 'always' })
  assert.deepEqual(seen, { active: false, rest: 1, after: 1, bursts: 0 })
  // Said explicitly, the default gates them.
  assert.deepEqual(child('new HugePageGate().start(); console.log(thp())', { STRATA_HUGE_PAGES: 'burst' }), 0)
})

test('a STRATA_HUGE_PAGES the gate does not know is refused by name', () => {
  const r = run('new HugePageGate()', { STRATA_HUGE_PAGES: 'alwyas' })
  assert.notEqual(r.status, 0)
  assert.match(r.stderr, /STRATA_HUGE_PAGES must be "burst" or "always", got "alwyas"/)
})

test('a kernel that refuses the call leaves the gate off, and bursts run as before', async () => {
  const calls: boolean[] = []
  const gate = new HugePageGate({ enabled: true, set: (on) => { calls.push(on); throw Object.assign(new Error('prctl: Invalid argument'), { code: 'EINVAL' }) } })
  gate.start()
  assert.equal(gate.active, false)
  assert.equal(await gate.during(async () => 42), 42)
  gate.stop()
  assert.deepEqual(calls, [false])
  assert.equal(gate.counters.bursts, 0)
})
