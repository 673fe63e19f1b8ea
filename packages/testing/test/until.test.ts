import assert from 'node:assert/strict'
import { test } from 'node:test'
import { until } from '../src/index.ts'

test('until returns once the condition holds, sync or async', async () => {
  let n = 0
  await until('three polls', () => ++n >= 3, { everyMs: 1 })
  assert.equal(n, 3)
  await until('an async condition', async () => await Promise.resolve(true))
})

test('until throws, naming what it waited for, once the time is up', async () => {
  await assert.rejects(until('the moon', () => false, { timeoutMs: 30, everyMs: 5 }), /waited 30 ms for the moon/)
})
