import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ClassicLevel } from 'classic-level'
import { pino } from 'pino'
import { tempDir } from '@strata/testing'
import { Uses } from '../src/uses.ts'

test('the last uses held in memory are the last window\'s; older ones are read back from the index', async (t) => {
  const db = new ClassicLevel<string, Uint8Array>(`${tempDir(t)}/index`, { keyEncoding: 'utf8', valueEncoding: 'view' })
  t.after(async () => { await db.close() })
  const EVERY = 1000
  const uses = new Uses(db, pino({ level: 'silent' }), EVERY)
  for (let i = 0; i < 500; i++) uses.touch(`old-${i}`, 10_000 + i)
  uses.wrote('committed', 10_500)
  assert.equal(uses.held, 501)
  // A use one window later: the earlier ones are written, and dropped from memory.
  uses.touch('late', 11_600)
  assert.equal(uses.held, 1, 'only the last window\'s use is held')
  await uses.settle()
  assert.equal(await uses.lastUsed('old-7', 0), 10_007, 'a forgotten use is read from the index')
  assert.equal(await uses.lastUsed('late', 0), 11_600)
  // Within the window a second touch is not written again, and the first is kept.
  uses.touch('late', 11_900)
  await uses.settle()
  assert.equal(await uses.lastUsed('late', 0), 11_600)
})
