import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { RunnerEvent } from '../src/index.ts'
import { harness, sideChannel } from './helpers.ts'

const misses = (events: readonly RunnerEvent[]): string[] => events.filter((e) => e.type === 'miss').map((e) => (e as { reason: string }).reason)

test('records are written in the runner\'s scope and read in its read-scope order', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const run = `echo ran >> ${side.dir}/ran`
  const main = await h.reopen({ scope: 'main' })
  const first = await main.exec({ name: 's', run })
  assert.equal(first.status, 'ran')
  assert.ok(await h.store.getRecord(`runner/record/${first.key}/main`) !== undefined, 'the record is kept under its scope')

  // A branch that reads only itself does not use main's record.
  const isolated = await h.reopen({ scope: 'pr/1' })
  const events: RunnerEvent[] = []
  assert.equal((await isolated.exec({ name: 's', run }, { onEvent: (e) => events.push(e) })).status, 'ran')
  assert.deepEqual(misses(events), ['no-record'])
  assert.equal(side.lines().length, 2)

  // A branch that falls back to main hits main's record, or its own once it has one.
  const branch = await h.reopen({ scope: 'pr/2', readScopes: ['pr/2', 'main'] })
  assert.equal((await branch.exec({ name: 's', run })).status, 'hit')
  assert.equal(side.lines().length, 2)
  // main never reads a branch's records.
  const run2 = `echo ran2 >> ${side.dir}/ran`
  const other = await h.reopen({ scope: 'pr/3', readScopes: ['pr/3', 'main'] })
  const ran = await other.exec({ name: 's2', run: run2 })
  assert.equal(ran.status, 'ran')
  const onMain = await h.reopen({ scope: 'main' })
  const again = await onMain.exec({ name: 's2', run: run2 })
  assert.equal(again.status, 'ran')
  assert.equal(again.key, ran.key, 'the same key, in another scope')
  assert.equal(side.lines().length, 4)
})

test('records written before the configured epoch are disowned', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const run = `echo ran >> ${side.dir}/ran`
  await (await h.reopen({ epoch: 1 })).exec({ name: 's', run })
  assert.equal((await (await h.reopen({ epoch: 1 })).exec({ name: 's', run })).status, 'hit')
  const events: RunnerEvent[] = []
  const bumped = await h.reopen({ epoch: 2 })
  assert.equal((await bumped.exec({ name: 's', run }, { onEvent: (e) => events.push(e) })).status, 'ran')
  assert.deepEqual(misses(events), ['invalid-record'])
  assert.equal(side.lines().length, 2)
  // The record it wrote instead is in epoch 2: a hit from now on, also for a reader still in epoch 1.
  assert.equal((await bumped.exec({ name: 's', run })).status, 'hit')
  assert.equal((await (await h.reopen({ epoch: 1 })).exec({ name: 's', run })).status, 'hit')
})

test('a bad scope or epoch is refused when the runner is created', async (t) => {
  const h = await harness(t)
  await assert.rejects(h.reopen({ scope: '../main' }), TypeError)
  await assert.rejects(h.reopen({ readScopes: [] }), TypeError)
  await assert.rejects(h.reopen({ epoch: -1 }), TypeError)
})
