import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { HitLog, processStats, RECENT_HITS } from '../src/fleet-view.ts'

test('the live heap is read after a full collection, beside the heap as it stood; without asking, no collection', (t) => {
  setFlagsFromString('--expose-gc')
  const g = globalThis as { gc?: () => void }
  const had = g.gc
  g.gc = runInNewContext('gc') as () => void
  t.after(() => { g.gc = had })
  g.gc()
  // 40 MB of garbage the next collection frees: counted in heapUsed, not in the live heap.
  const made = (): number => Array.from({ length: 200 }, () => Array.from({ length: 25_000 }, (_, i) => i + 0.5)).length
  assert.equal(made(), 200)
  const plain = processStats()
  assert.equal(plain.heapLive, undefined, 'a plain status collects nothing')
  const live = processStats({ liveHeap: true })
  assert.ok(live.heapLive !== undefined)
  assert.ok(live.heapUsed - live.heapLive > 30e6, `heapUsed ${live.heapUsed}, live ${live.heapLive}`)
  assert.ok(live.heapCode !== undefined && live.heapCode > 100_000 && live.heapCode < live.heapLive, `code ${live.heapCode} of ${live.heapLive}`)
})

test('the hit log keeps the newest hits and every total', () => {
  const log = new HitLog()
  for (let i = 0; i < RECENT_HITS + 10; i++) log.add(i % 2 === 0 ? 'local' : 'peer')
  log.add('miss')
  assert.equal(log.recent.length, RECENT_HITS)
  assert.equal(log.recent.at(-1)!.source, 'miss')
  assert.deepEqual(log.totals, { local: (RECENT_HITS + 10) / 2, peer: (RECENT_HITS + 10) / 2, miss: 1 })
})
