import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { OffHeapPacer, ScavengePacer, SCAVENGE_EVERY_BYTES } from '../src/scavenge.ts'

const CALLS = fileURLToPath(new URL('./fixtures/scavenge-calls.ts', import.meta.url))

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

interface Asked { active: boolean, runs: number, calls: unknown[] }

function moveBlocks (blocks: number, exposeGc: boolean): Asked {
  const r = spawnSync(process.execPath, [...(exposeGc ? ['--expose-gc'] : []), CALLS, String(blocks)], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 0, r.stderr)
  return JSON.parse(r.stdout) as Asked
}

test('the process\'s pacer asks V8 for a minor collection per SCAVENGE_EVERY_BYTES moved when gc is exposed, and for nothing when not', () => {
  // 320 MiB of blocks.
  const blocks = 5000
  const expected = Math.floor(blocks * 64 * 1024 / SCAVENGE_EVERY_BYTES)
  const exposed = moveBlocks(blocks, true)
  assert.equal(exposed.active, true)
  assert.equal(exposed.runs, expected)
  assert.deepEqual(exposed.calls, Array.from({ length: expected }, () => ({ type: 'minor' })))
  assert.deepEqual(moveBlocks(blocks, false), { active: false, runs: 0, calls: [] })
})

test('the off-heap pacer scavenges once buffers grew by `growth`, and runs a full collection when a scavenge frees too little', async () => {
  let bytes = 0
  const asked: string[] = []
  // A scavenge frees half of what grew; a full collection frees the rest.
  let base = 0
  const p = new OffHeapPacer({
    growth: 1000,
    usage: () => bytes,
    collect: async (o) => {
      asked.push(o.type)
      bytes = o.type === 'minor' ? base + (bytes - base) / 2 : base
    }
  })
  bytes = 999
  await p.check()
  assert.deepEqual(asked, [], 'below the growth: nothing')
  bytes = 1500
  await p.check()
  assert.deepEqual(asked, ['minor'], 'a scavenge brought it back under the growth')
  base = 750
  bytes = 750 + 4000
  await p.check()
  assert.deepEqual(asked, ['minor', 'minor', 'major'])
  assert.deepEqual(p.runs, { minor: 2, major: 1 })
  // Freed buffers lower the base: the next growth counts from there.
  bytes = 100
  await p.check()
  bytes = 1000
  await p.check()
  assert.equal(p.runs.minor, 2)
  bytes = 1100
  await p.check()
  assert.equal(p.runs.minor, 3)
  assert.equal(new OffHeapPacer({ collect: undefined }).active, false)
})
