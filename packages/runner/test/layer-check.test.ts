import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import { tempDir, writeTree } from '@strata/testing'
import { parsePipeline } from '../src/index.ts'
import { harness, sideChannel, statuses } from './helpers.ts'

test('a flipped byte in a cached layer is a miss (layer-corrupt): the step runs again, and the next run hits with good bytes', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = `${tempDir(t)}/proj`
  // victim.txt's removal leaves a whiteout in the layer: overlay links the whiteouts of a
  // run to one inode in its work dir, whose removal moves their ctime after the commit.
  writeTree(proj, { 'content.txt': 'good bytes, line one\nline two\n', 'victim.txt': 'x' })
  const yml = `base: host
steps:
  - name: make
    inputs: [content.txt]
    run: |
      echo make >> ${side.dir}/ran
      mkdir -p /opt/strata-layer-check && cp content.txt /opt/strata-layer-check/out
      rm victim.txt
  - name: use
    cache: false
    run: |
      echo use >> ${side.dir}/ran
      cat /opt/strata-layer-check/out >> ${side.dir}/seen
`
  writeFileSync(`${proj}/strata.yml`, yml)
  const p = parsePipeline(yml, { file: `${proj}/strata.yml` })
  const first = await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), ['make', 'use'])
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['make:hit', 'use:ran'], 'an untouched layer, whiteout and all, checks ok')
  assert.deepEqual(side.lines(), ['make', 'use', 'use'])
  const bad = first.steps[0]!.layer
  const layer = (await h.store.getLayer(CID.parse(bad)))!
  const fd = openSync(`${layer.path}/opt/strata-layer-check/out`, 'r+')
  writeSync(fd, 'B', 0)
  closeSync(fd)

  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  const miss = h.events.find((e) => e.type === 'miss' && e.step === 'make')
  assert.deepEqual(miss !== undefined && miss.type === 'miss' ? miss.reason : undefined, 'layer-corrupt')
  assert.deepEqual(side.lines(), ['make', 'use', 'use', 'make', 'use'], 'make ran again (use, uncached, always runs)')
  assert.equal((await h.store.checkLayer(CID.parse(bad))).status, 'corrupt', 'the bad layer is marked')
  assert.deepEqual(side.lines('seen').slice(4), ['good bytes, line one', 'line two'], 'the step on top saw good bytes, not the flipped one')

  h.events.length = 0
  const third = await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['make:hit', 'use:ran'])
  assert.deepEqual(side.lines(), ['make', 'use', 'use', 'make', 'use', 'use'])
  assert.equal(side.lines('seen').length, 8)
  assert.equal(side.lines('seen')[6], 'good bytes, line one')
  const good = (await h.store.getLayer(CID.parse(third.steps[0]!.layer)))!
  assert.equal(readFileSync(`${good.path}/opt/strata-layer-check/out`, 'utf8'), 'good bytes, line one\nline two\n')
})
