import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { parsePipeline } from '../src/index.ts'
import { harness, sideChannel, statuses, tempDir } from './helpers.ts'

test('a 60-step chain mounts every layer below each step and hits all 60 on the next run', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const n = 60
  let yml = 'base: host\nsteps:\n'
  for (let i = 0; i < n; i++) {
    // Each step checks it sees every layer below it, then adds its own.
    yml += `  - name: s${i}\n    run: test "$(ls /opt/chain 2>/dev/null | wc -l)" = ${i}; mkdir -p /opt/chain; echo ${i} > /opt/chain/f${i}; echo s${i} >> ${side.dir}/ran\n`
  }
  yml += `  - name: last\n    run: cat /opt/chain/* | sort -n | tr '\\n' ' ' > ${side.dir}/seen\n`
  writeFileSync(`${proj}/strata.yml`, yml)
  const p = parsePipeline(yml, { file: `${proj}/strata.yml` })
  const first = await h.runner.run(p, { onEvent: h.onEvent })
  assert.equal(side.lines().length, n)
  assert.equal(readFileSync(`${side.dir}/seen`, 'utf8').trim(), Array.from({ length: n }, (_, i) => i).join(' '))
  // Absolute layer paths would not fit in one page of mount options: the test means something.
  const layerPaths = first.steps.map((s) => `${h.dataDir}/layers/${s.layer}`).join(':')
  assert.ok(layerPaths.length > 4096, `${layerPaths.length} bytes of lowerdir paths`)

  h.events.length = 0
  const started = performance.now()
  await h.runner.run(p, { onEvent: h.onEvent })
  const warmMs = performance.now() - started
  assert.equal(side.lines().length, n)
  assert.deepEqual(statuses(h.events), [...Array.from({ length: n }, (_, i) => `s${i}:hit`), 'last:hit'])
  assert.ok(warmMs < 5000, `a warm run of ${n + 1} steps took ${warmMs}ms`)
})
