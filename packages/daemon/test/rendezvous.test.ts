import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { score, top } from '../src/rendezvous.ts'

const peer = fc.stringMatching(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)

test('every peer ranks the same candidates alike, whatever order it lists them in', () => {
  fc.assert(fc.property(fc.string(), fc.uniqueArray(peer, { minLength: 1, maxLength: 20 }), fc.nat(5), (item, peers, n) => {
    const reversed = [...peers].reverse()
    assert.deepEqual(top(item, peers, n), top(item, reversed, n))
  }))
})

test('the chosen are the highest scores, and a candidate outside them leaving changes nothing', () => {
  fc.assert(fc.property(fc.string(), fc.uniqueArray(peer, { minLength: 2, maxLength: 20 }), fc.integer({ min: 1, max: 4 }), (item, peers, n) => {
    const chosen = top(item, peers, n)
    assert.equal(chosen.length, Math.min(n, peers.length))
    const lowest = Math.min(...chosen.map((p) => score(item, p)))
    for (const p of peers) if (!chosen.includes(p)) assert.ok(score(item, p) <= lowest)
    const outsider = peers.find((p) => !chosen.includes(p))
    if (outsider !== undefined) assert.deepEqual(top(item, peers.filter((p) => p !== outsider), n), chosen)
  }))
})

test('the score spreads items over peers that share a long prefix', () => {
  const peers = Array.from({ length: 8 }, (_, i) => `12D3KooWsharedprefix${i}`)
  const owners = new Map<string, number>()
  for (let i = 0; i < 8000; i++) {
    const owner = top(`block-${i}`, peers, 1)[0]!
    owners.set(owner, (owners.get(owner) ?? 0) + 1)
  }
  assert.equal(owners.size, peers.length, 'every peer owns some blocks')
  for (const n of owners.values()) assert.ok(n > 500 && n < 1500, `an even share, got ${n} of 8000`)
})
