import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { Recent } from '../src/recent.ts'

test('an entry is kept for its window, gone after twice that, and the whole stays within its bound', () => {
  const KEEP = 1000
  const MAX = 8
  fc.assert(fc.property(
    fc.array(fc.oneof(
      fc.record({ set: fc.integer({ min: 0, max: 11 }) }),
      fc.record({ wait: fc.integer({ min: 1, max: 1500 }) })
    ), { maxLength: 200 }),
    (ops) => {
      const clock = { now: 0 }
      const recent = new Recent<number>({ keepMs: KEEP, maxEntries: MAX, now: () => clock.now })
      /** When each key was last set, and how many sets followed it. */
      const setAt = new Map<string, { at: number, after: number }>()
      for (const op of ops) {
        if ('wait' in op) clock.now += op.wait
        else {
          for (const s of setAt.values()) s.after++
          const key = `k${op.set}`
          recent.set(key, clock.now)
          setAt.set(key, { at: clock.now, after: 0 })
        }
        assert.ok(recent.size <= MAX, `${recent.size} entries held, bound ${MAX}`)
        for (const [key, s] of setAt) {
          const age = clock.now - s.at
          // Fewer sets since than a generation holds: no early swap can have dropped it.
          if (age < KEEP && s.after < MAX / 2) assert.equal(recent.get(key), s.at, `${key} set ${age} ms ago is kept`)
          if (age >= 2 * KEEP) assert.equal(recent.has(key), false, `${key} set ${age} ms ago is forgotten`)
        }
      }
    }
  ), { numRuns: 300 })
})

test('a bad window or bound is refused', () => {
  assert.throws(() => new Recent({ keepMs: 0, maxEntries: 10 }), /keepMs > 0/)
  assert.throws(() => new Recent({ keepMs: 10, maxEntries: 1 }), /maxEntries >= 2/)
})
