import assert from 'node:assert/strict'
import { test } from 'node:test'
import { setImmediate as turn } from 'node:timers/promises'
import { Lookahead } from '../src/lookahead.ts'

/** Whether a promise has settled after the pending callbacks have run. */
async function settled (p: Promise<unknown>): Promise<boolean> {
  let done = false
  p.then(() => { done = true }, () => { done = true })
  await turn()
  await turn()
  return done
}

test('room waits while the queue holds as many items as allowed, and comes when the writer takes one', async () => {
  const q = new Lookahead<string>(2, 1000)
  await q.room(1)
  q.add('a', 1)
  await q.room(1)
  q.add('b', 1)
  const third = q.room(1)
  assert.equal(await settled(third), false)
  assert.equal(await q.next(), 'a')
  assert.equal(await settled(third), true)
  assert.equal(q.stopped, false)
})

test('room waits while the weight would pass the budget, counting taken items until they are released', async () => {
  const q = new Lookahead<string>(10, 100)
  q.add('a', 60)
  const more = q.room(50)
  assert.equal(await settled(more), false)
  assert.equal(await q.next(), 'a')
  // The item taken still counts until it is released, queue empty or not.
  assert.equal(await settled(more), false, 'an empty queue but 60 of 100 held')
  q.release(60)
  assert.equal(await settled(more), true)
  q.add('b', 50)
  const again = q.room(60)
  assert.equal(await settled(again), false, 'a queued item and 110 of 100')
  assert.equal(await q.next(), 'b')
  assert.equal(await settled(again), false, '50 held, taken or not')
  q.release(50)
  assert.equal(await settled(again), true)
  assert.equal(q.weight, 0)
})

test('an item heavier than the whole budget goes through alone', async () => {
  const q = new Lookahead<string>(4, 10)
  await q.room(1000)
  q.add('huge', 1000)
  const next = q.room(1)
  assert.equal(await settled(next), false)
  assert.equal(await q.next(), 'huge')
  assert.equal(await settled(next), false, 'taken but not released')
  q.release(1000)
  assert.equal(await settled(next), true)
})

test('next waits for an item, gives them in order, and undefined once ended', async () => {
  const q = new Lookahead<number>(8, 8)
  const first = q.next()
  assert.equal(await settled(first), false)
  q.add(1, 1)
  q.add(2, 1)
  q.end()
  assert.equal(await first, 1)
  assert.equal(await q.next(), 2)
  assert.equal(await q.next(), undefined)
  assert.throws(() => q.add(3, 1), /after the lookahead ended/)
})

test("a reader's failure reaches the writer ahead of the items still queued", async () => {
  const q = new Lookahead<number>(8, 8)
  q.add(1, 1)
  q.fail(new Error('list 3 is not dag-cbor'))
  await assert.rejects(q.next(), /list 3 is not dag-cbor/)
  const waiting = new Lookahead<number>(8, 8)
  const next = waiting.next()
  waiting.fail(new Error('gone'))
  await assert.rejects(next, /gone/)
})

test('end alone wakes a waiting writer, with undefined', async () => {
  const q = new Lookahead<number>(8, 8)
  const next = q.next()
  assert.equal(await settled(next), false)
  q.end()
  assert.equal(await next, undefined)
})

test('stop wakes a waiting reader and a waiting writer, and what the reader adds after it is drained', async () => {
  const q = new Lookahead<string>(1, 100)
  q.add('a', 10)
  const waiting = q.room(10)
  assert.equal(await settled(waiting), false)
  q.stop()
  assert.equal(await settled(waiting), true)
  assert.equal(q.stopped, true)
  // A reader that resumed before it saw the stop may still add one: it is not lost.
  q.add('b', 10)
  assert.equal(await q.next(), undefined)
  assert.deepEqual(q.drain(), ['a', 'b'])
  assert.deepEqual(q.drain(), [])

  const idle = new Lookahead<string>(1, 100)
  const next = idle.next()
  assert.equal(await settled(next), false)
  idle.stop()
  assert.equal(await next, undefined)
})

test('a lookahead needs room for an item; a weight budget of 0 lets one in at a time', async () => {
  assert.throws(() => new Lookahead(0, 10), RangeError)
  assert.throws(() => new Lookahead(Number.NaN, 10), RangeError)
  assert.throws(() => new Lookahead(1, Number.NaN), RangeError)
  const q = new Lookahead<string>(4, 0)
  await q.room(5)
  q.add('a', 5)
  const more = q.room(5)
  assert.equal(await settled(more), false)
  assert.equal(await q.next(), 'a')
  assert.equal(await settled(more), false)
  q.release(5)
  assert.equal(await settled(more), true)
})
