import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { ScavengePacer, SCAVENGE_EVERY_BYTES } from '../src/scavenge.ts'

const CHURN = fileURLToPath(new URL('./fixtures/scavenge-churn.ts', import.meta.url))

test('the pacer scavenges once for every `every` bytes moved, counting across calls', () => {
  const asked: string[] = []
  const p = new ScavengePacer({ every: 1000, collect: (o) => { asked.push(o.type) } })
  assert.equal(p.active, true)
  p.moved(999)
  assert.equal(p.runs, 0)
  p.moved(1)
  assert.equal(p.runs, 1)
  for (let i = 0; i < 25; i++) p.moved(100)
  assert.equal(p.runs, 3)
  // A single large move is one scavenge, not one per `every` it spans.
  p.moved(10_000)
  assert.equal(p.runs, 4)
  assert.deepEqual(asked, ['minor', 'minor', 'minor', 'minor'])
})

test('without gc exposed the pacer does nothing', () => {
  const p = new ScavengePacer({ collect: undefined })
  assert.equal(p.active, false)
  p.moved(100 * SCAVENGE_EVERY_BYTES)
  assert.equal(p.runs, 0)
  assert.throws(() => new ScavengePacer({ every: 0 }), /every must be a positive byte count, got 0/)
})

interface Churn { major: number, minor: number, runs: number, active: boolean }

function churn (paced: boolean): Churn {
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=16', CHURN, paced ? 'paced' : 'unpaced'], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 0, r.stderr)
  return JSON.parse(r.stdout) as Churn
}

test('in V8, buffers that die young set off full collections, and paced scavenges free them first', () => {
  const unpaced = churn(false)
  const paced = churn(true)
  assert.equal(paced.active, true)
  // 320 MiB of blocks (640 MiB of buffers), a scavenge every 4 MiB.
  assert.equal(paced.runs, Math.floor(5000 * 64 * 1024 / SCAVENGE_EVERY_BYTES))
  assert.ok(paced.minor >= paced.runs, JSON.stringify(paced))
  // Left alone, V8 starts a full collection for about every 64 MiB of buffers (8 here).
  assert.ok(unpaced.major >= 5, JSON.stringify(unpaced))
  assert.ok(paced.major <= 2, `paced ${JSON.stringify(paced)}, unpaced ${JSON.stringify(unpaced)}`)
})
