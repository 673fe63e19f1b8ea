import { test } from 'node:test'
import assert from 'node:assert/strict'
import { words } from '../src/log.ts'

test('a warning is one line of words: message, error with its code, scalar fields', () => {
  const line = JSON.stringify({ level: 40, time: 1, pid: 7, component: 'store', msg: 'cannot remove a layer dir', layer: 'bafy x', size: 3, err: { type: 'Error', message: 'EBUSY: busy\n    at stack', code: 'EBUSY', stack: 'Error\n  at x' }, nested: { a: 1 } })
  assert.equal(words(line), 'strata: warning: cannot remove a layer dir: EBUSY: busy (EBUSY) (layer="bafy x", size=3)\n')
  assert.equal(words(JSON.stringify({ level: 50, msg: 'layer marked corrupt', layer: 'bafy1' })), 'strata: error: layer marked corrupt (layer=bafy1)\n')
})

test('below warn, or not JSON, nothing is printed', () => {
  assert.equal(words(JSON.stringify({ level: 30, msg: 'daemon started' })), undefined)
  assert.equal(words('not json\n'), undefined)
})

test('control characters in a message or a field cannot break the line or reach the terminal', () => {
  const out = words(JSON.stringify({ level: 40, msg: 'bad\u001b[2Jname\rhere', path: 'a\nb\u0007' }))!
  assert.equal(out.split('\n').length, 2)
  // eslint-disable-next-line no-control-regex
  assert.doesNotMatch(out.slice(0, -1), /[\u0000-\u001f\u007f]/)
  assert.match(out, /path="a\\nb\\u0007"/)
})
