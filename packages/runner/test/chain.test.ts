import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { tempDir } from '@strata/testing'
import { parsePipeline } from '../src/index.ts'
import { harness, sideChannel, statuses } from './helpers.ts'

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

test('a pipeline with more steps than OverlayFS can stack is refused before its first step runs', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const yml = `base: host\nsteps:\n  - { name: s0, run: "echo ran >> ${side.dir}/ran" }\n  - { name: s1, run: "true" }\n`
  const base = parsePipeline(yml, { file: `${tempDir(t)}/strata.yml` })
  // Built in code, past what strata.yml would accept: the runner checks it too.
  const steps = Array.from({ length: 501 }, (_, i) => ({ ...base.steps[i === 0 ? 0 : 1]!, name: `s${i}` }))
  await assert.rejects(h.runner.run({ ...base, steps }, { onEvent: h.onEvent }), { code: 'ERR_CHAIN_TOO_LONG', message: /500 layers below a step; OverlayFS stacks at most 499/ })
  assert.deepEqual(side.lines(), [], 'no step ran')
  assert.deepEqual(h.events, [])
})
