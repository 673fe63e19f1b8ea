import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { CID } from 'multiformats/cid'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import { MAX_LEASE_FILES, openStore, parseSize, takeLease } from '../src/index.ts'
import type { LayerInfo, LocalStore, Store } from '../src/index.ts'
import { assertConsistent, runChild } from './helpers.ts'

const text = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} ${i} ${(i * 2654435761) % 1000003}\n`).join('')

/** Commits `names.length` layers of the same size, one after the other (so their last use is in that order). */
async function layers (t: { after: (fn: () => void) => void }, names: string[]): Promise<{ dir: string, data: string, store: Store & LocalStore, by: Map<string, LayerInfo>, expected: Map<string, unknown> }> {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  const store = await openStore({ dataDir: data, touchEveryMs: 0 })
  const by = new Map<string, LayerInfo>()
  const expected = new Map<string, unknown>()
  for (const name of names) {
    const src = join(dir, `src-${name}`)
    buildTree(src, { [`${name}.txt`]: text(name, 10_000) })
    const d = describeTree(src)
    const l = await store.commit(src)
    by.set(name, l)
    expected.set(l.root.toString(), d)
    await sleep(5)
  }
  return { dir, data, store, by, expected }
}

const rootsOf = (list: Array<{ root: string }>): string[] => list.map((l) => l.root)

test('collects least recently used layers first, down to the size asked', async (t) => {
  const { dir, data, store, by, expected } = await layers(t, ['a', 'b', 'c'])
  let closed = false
  t.after(async () => { if (!closed) await store.close() })
  const [a, b, c] = ['a', 'b', 'c'].map((n) => by.get(n)!)
  // Serving a block of a counts as a use: a becomes the most recently used.
  const [entry] = await Array.fromAsync(store.entries(a!.root))
  await sleep(5)
  await store.getBlock(entry!.chunks![0]!.cid)
  const size = a!.size
  assert.equal(b!.size, size)
  const dry = await store.gc({ maxSize: 2 * size, graceMs: 0, dryRun: true })
  assert.deepEqual(rootsOf(dry.removed), [b!.root.toString()])
  assert.equal(await store.has(b!.root), true, 'a dry run removed a layer')
  const report = await store.gc({ maxSize: 2 * size, graceMs: 0 })
  assert.deepEqual(rootsOf(report.removed), [b!.root.toString()])
  assert.equal(report.before, 3 * size)
  assert.equal(report.after, 2 * size)
  assert.equal(await store.has(b!.root), false)
  assert.equal(await store.has(a!.root), true)
  assert.equal(await store.has(c!.root), true)
  // Nothing to do when under the budget.
  assert.deepEqual((await store.gc({ maxSize: 2 * size, graceMs: 0 })).removed, [])
  await store.close()
  closed = true
  expected.delete(b!.root.toString())
  assert.deepEqual(await assertConsistent(data, expected, dir), [a!.root.toString(), c!.root.toString()].sort())
})

test('never collects a leased layer; a lease whose holder died pins nothing and is cleared', async (t) => {
  const { data, store, by } = await layers(t, ['a', 'b', 'c'])
  t.after(() => store.close())
  const lease = takeLease(data)
  t.after(() => lease.release())
  lease.add(by.get('a')!.root.toString())
  const died = await runChild(join(import.meta.dirname, 'fixtures', 'lease-child.ts'), [data, by.get('b')!.root.toString()])
  assert.equal(died.signal, 'SIGKILL')
  assert.equal(readdirSync(join(data, 'leases')).length, 2)
  const report = await store.gc({ maxSize: 0, graceMs: 0 })
  assert.deepEqual(report.kept.map((k) => [k.root, k.reason]), [[by.get('a')!.root.toString(), 'leased']])
  assert.deepEqual(rootsOf(report.removed).sort(), [by.get('b')!.root.toString(), by.get('c')!.root.toString()].sort())
  assert.equal(await store.has(by.get('a')!.root), true)
  assert.deepEqual(readdirSync(join(data, 'leases')), [lease.path.split('/').pop()], 'the dead holder\'s lease file was not cleared')
  // Released, the lease no longer protects (it now only says when the layer was last used).
  lease.release()
  assert.deepEqual(rootsOf((await store.gc({ maxSize: 0, graceMs: 0 })).removed), [by.get('a')!.root.toString()])
})

test('a lease file counts as a use of its layers at the time it was last written', async (t) => {
  const { data, store, by } = await layers(t, ['a', 'b'])
  t.after(() => store.close())
  await sleep(5)
  const lease = takeLease(data)
  lease.add(by.get('a')!.root.toString())
  lease.release()
  // a was committed first, but used since: b goes first.
  const report = await store.gc({ maxSize: by.get('a')!.size, graceMs: 0 })
  assert.deepEqual(rootsOf(report.removed), [by.get('b')!.root.toString()])
})

test('keeps recently used layers and the last copy in the fleet, unless over the hard limit', async (t) => {
  const { store, by } = await layers(t, ['a', 'b', 'c'])
  t.after(() => store.close())
  const a = by.get('a')!.root.toString()
  const size = by.get('a')!.size
  const copies = async (root: CID): Promise<number | undefined> => (root.toString() === a ? 1 : root.toString() === by.get('b')!.root.toString() ? 3 : undefined)
  // Everything was used just now: the default grace keeps it all.
  const recent = await store.gc({ maxSize: 0, copies })
  assert.deepEqual(recent.removed, [])
  assert.deepEqual(new Set(recent.kept.map((k) => k.reason)), new Set(['recent']))
  // Without the grace: a is the only copy and stays; b (3 copies) and c (unknown) go.
  const soft = await store.gc({ maxSize: 0, graceMs: 0, copies })
  assert.deepEqual(rootsOf(soft.removed), [by.get('b')!.root.toString(), by.get('c')!.root.toString()])
  assert.deepEqual(soft.kept, [{ root: a, size, reason: 'last-copy' }])
  assert.equal(await store.has(by.get('a')!.root), true)
  // Under the hard limit it stays; over it, it goes, reported as the last copy.
  assert.deepEqual((await store.gc({ maxSize: 0, hardLimit: size, graceMs: 0, copies })).removed, [])
  const hard = await store.gc({ maxSize: 0, hardLimit: size - 1, graceMs: 0, copies })
  assert.deepEqual(hard.removed.map((r) => [r.root, r.lastCopy]), [[a, true]])
  assert.equal(existsSync(by.get('a')!.path), false)
})

test('refuses sizes that make no sense, naming them', async (t) => {
  const { store } = await layers(t, [])
  t.after(() => store.close())
  await assert.rejects(store.gc({ maxSize: -1 }), { name: 'TypeError', message: /maxSize/ })
  await assert.rejects(store.gc({ maxSize: 10, hardLimit: 5 }), { name: 'TypeError', message: /hardLimit \(5\) must not be below maxSize \(10\)/ })
})

test('parses sizes as users write them', () => {
  assert.equal(parseSize('20G'), 20 * 1024 ** 3)
  assert.equal(parseSize('500M'), 500 * 1024 ** 2)
  assert.equal(parseSize('1.5k'), 1536)
  assert.equal(parseSize('2GiB'), 2 * 1024 ** 3)
  assert.equal(parseSize('4096'), 4096)
  for (const bad of ['', 'G', '-1G', '10X', '1e9', 'twenty']) assert.throws(() => parseSize(bad), { name: 'TypeError', message: new RegExp(`^${JSON.stringify(bad)} is not a size`) })
})

test('collects layers marked corrupt first, whatever the budget', async (t) => {
  const { store, by } = await layers(t, ['a', 'b'])
  t.after(() => store.close())
  const a = by.get('a')!
  const [entry] = await Array.fromAsync(store.entries(a.root))
  writeFileSync(join(a.path, 'a.txt'), 'changed under the store')
  await assert.rejects(store.getBlock(entry!.chunks![0]!.cid), { code: 'ERR_BLOCK_CORRUPT' })
  const report = await store.gc({ maxSize: 1e12 })
  assert.deepEqual(report.removed.map((r) => [r.root, r.corrupt]), [[a.root.toString(), true]])
  assert.equal(existsSync(a.path), false)
  assert.equal(await store.has(by.get('b')!.root), true)
})

test('ended leases are folded in and deleted when the store opens; taking a lease bounds how many pile up', async (t) => {
  const { data, store, by } = await layers(t, ['a'])
  await store.close()
  for (let i = 0; i < 3; i++) takeLease(data).release()
  const held = takeLease(data)
  t.after(() => held.release())
  const reopened = await openStore({ dataDir: data })
  t.after(() => reopened.close())
  assert.deepEqual(readdirSync(join(data, 'leases')), [held.path.split('/').pop()])
  for (let i = 0; i < MAX_LEASE_FILES + 5; i++) takeLease(data).release()
  assert.ok(readdirSync(join(data, 'leases')).length <= MAX_LEASE_FILES + 1)
  assert.ok(readdirSync(join(data, 'leases')).includes(held.path.split('/').pop()!), 'a held lease was deleted')
  assert.equal(await reopened.has(by.get('a')!.root), true)
})

test('a lease taken after the collection looked at the leases, but before the removal, still saves the layer', async (t) => {
  const { data, store, by } = await layers(t, ['a', 'b'])
  t.after(() => store.close())
  const a = by.get('a')!.root.toString()
  const late = takeLease(data)
  t.after(() => late.release())
  // The collection asks for copies just before removing a layer: lease it right then, as a runner would.
  const copies = async (root: CID): Promise<number | undefined> => {
    if (root.toString() === a) late.add(a)
    return undefined
  }
  const report = await store.gc({ maxSize: 0, graceMs: 0, copies })
  assert.deepEqual(report.kept.map((k) => [k.root, k.reason]), [[a, 'leased']])
  assert.deepEqual(rootsOf(report.removed), [by.get('b')!.root.toString()])
  assert.equal(await store.has(by.get('a')!.root), true, 'the layer leased late was removed')
  assert.ok(existsSync(by.get('a')!.path))
})

test('a collection during a restore leaves the layer being fetched alone, and the restore completes', { timeout: 120_000 }, async (t) => {
  const dir = tempDir(t)
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const src = join(dir, 'src')
  buildTree(src, { 'a.txt': text('a', 40_000), 'b.txt': text('b', 40_000), 'c.txt': text('c', 40_000) })
  const expected = describeTree(src)
  const layer = await producer.commit(src, { keepSource: true })
  const { store: consumer, by } = await layers(t, ['old'])
  t.after(() => consumer.close())
  // The source stops after its first content blocks until the collection has run.
  let served = 0
  let paused!: () => void
  const reachedPause = new Promise<void>((resolve) => { paused = resolve })
  let resume!: () => void
  const resumed = new Promise<void>((resolve) => { resume = resolve })
  const source = {
    getBlock: async (cid: CID, o?: { signal?: AbortSignal }): Promise<Uint8Array> => {
      if (++served === 4) {
        paused()
        await resumed
      }
      return await producer.getBlock(cid, o)
    }
  }
  const restoring = consumer.restore(layer.root, source)
  // A restore that fails before the pause must fail the test, not hang it.
  await Promise.race([reachedPause, restoring.then(() => { throw new Error(`the restore ended after ${served} blocks, before the pause`) })])
  const report = await consumer.gc({ maxSize: 0, hardLimit: 0, graceMs: 0 })
  resume()
  const restored = await restoring
  // The collection did run: the old layer went, the one on its way did not.
  assert.deepEqual(report.removed.map((r) => r.root), [by.get('old')!.root.toString()])
  assert.equal(await consumer.getLayer(by.get('old')!.root), undefined)
  assert.equal(restored.root.toString(), layer.root.toString())
  assert.deepEqual(describeTree(restored.path), expected)
  assert.ok(served > 4)
})
