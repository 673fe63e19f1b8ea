import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, openSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import { openStore } from '../src/index.ts'
import { assertConsistent } from './helpers.ts'

const text = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} ${i} ${(i * 2654435761) % 1000003}\n`).join('')

/** Two committed layers in a closed store, and what each holds. */
async function twoLayers (dir: string): Promise<{ data: string, expected: Map<string, unknown>, roots: string[] }> {
  const data = join(dir, 'data')
  const store = await openStore({ dataDir: data })
  const expected = new Map<string, unknown>()
  const roots: string[] = []
  for (const name of ['one', 'two']) {
    const src = join(dir, name)
    buildTree(src, { [`${name}.bin`]: text(name, 30_000), 'sub': { dir: { 'x': name, 'link': { symlink: 'x' } } }, 'gone': { whiteout: true } })
    const d = describeTree(src)
    const l = await store.commit(src)
    expected.set(l.root.toString(), d)
    roots.push(l.root.toString())
  }
  await store.putRecord('record:k', Uint8Array.of(1, 2, 3))
  await store.close()
  // Push everything into table files too, so that damage to them is seen.
  const db = new ClassicLevel(join(data, 'index'))
  await db.compactRange('\x00', '\xff')
  await db.close()
  return { data, expected, roots: roots.sort() }
}

const damage: Record<string, (index: string) => void> = {
  'garbage in every file': (index) => {
    for (const f of readdirSync(index)) if (f !== 'LOCK') writeFileSync(join(index, f), 'not leveldb '.repeat(50))
  },
  'every file truncated': (index) => {
    for (const f of readdirSync(index)) if (f !== 'LOCK') truncateSync(join(index, f), 7)
  },
  'the table files overwritten': (index) => {
    for (const f of readdirSync(index)) {
      if (!f.endsWith('.ldb')) continue
      const fd = openSync(join(index, f), 'r+')
      writeSync(fd, Buffer.alloc(statSync(join(index, f)).size, 0x5a), 0, undefined, 0)
      closeSync(fd)
    }
  },
  'CURRENT deleted': (index) => rmSync(join(index, 'CURRENT')),
  'everything deleted (LevelDB then starts an empty index)': (index) => { for (const f of readdirSync(index)) rmSync(join(index, f)) }
}

for (const [name, harm] of Object.entries(damage)) {
  test(`an index with ${name} is quarantined and rebuilt from the layer dirs`, async (t) => {
    const dir = tempDir(t)
    const { data, expected, roots } = await twoLayers(dir)
    harm(join(data, 'index'))
    assert.deepEqual(await assertConsistent(data, expected, dir), roots)
    const aside = readdirSync(data).filter((n) => n.startsWith('index.corrupt-'))
    // An empty index is not corrupt: there is nothing to keep, but the layers are indexed again.
    assert.equal(aside.length, name.startsWith('everything') ? 0 : 1, 'the corrupt index was not kept aside for inspection')
    // Rebuilt layers serve their blocks and take new commits.
    const store = await openStore({ dataDir: data })
    t.after(() => store.close())
    for (const l of await store.listLayers()) {
      for await (const e of store.entries(l.root)) for (const c of e.chunks ?? []) assert.equal((await store.getBlock(c.cid)).length, c.length)
    }
    buildTree(join(dir, 'three'), { 'f': 'three' })
    assert.ok(await store.commit(join(dir, 'three')))
  })
}

test('rebuilding drops a layer dir whose content no longer packs to its name', async (t) => {
  const dir = tempDir(t)
  const { data, expected, roots } = await twoLayers(dir)
  const bad = roots[0]!
  const file = readdirSync(join(data, 'layers', bad)).find((n) => n.endsWith('.bin'))!
  const fd = openSync(join(data, 'layers', bad, file), 'r+')
  writeSync(fd, 'X', 1000)
  closeSync(fd)
  damage['garbage in every file']!(join(data, 'index'))
  expected.delete(bad)
  assert.deepEqual(await assertConsistent(data, expected, dir), [roots[1]!])
})

test('at most three quarantined indexes are kept', async (t) => {
  const dir = tempDir(t)
  const { data } = await twoLayers(dir)
  for (let i = 0; i < 5; i++) {
    damage['every file truncated']!(join(data, 'index'))
    const s = await openStore({ dataDir: data })
    await s.close()
  }
  assert.equal(readdirSync(data).filter((n) => n.startsWith('index.corrupt-')).length, 3)
})

for (const [name, harm] of Object.entries({
  'CURRENT names a missing MANIFEST': (index: string) => writeFileSync(join(index, 'CURRENT'), 'MANIFEST-999999\n'),
  'CURRENT deleted': (index: string) => rmSync(join(index, 'CURRENT'))
})) {
  test(`records LevelDB repair can still read are salvaged from the quarantined index (${name})`, async (t) => {
    const dir = tempDir(t)
    const { data, expected, roots } = await twoLayers(dir)
    harm(join(data, 'index'))
    assert.deepEqual(await assertConsistent(data, expected, dir), roots)
    const store = await openStore({ dataDir: data })
    t.after(() => store.close())
    assert.deepEqual([...(await store.getRecord('record:k'))!], [1, 2, 3])
    const [aside] = readdirSync(data).filter((n) => n.startsWith('index.corrupt-'))
    assert.ok(readdirSync(join(data, aside!)).some((f) => f.endsWith('.ldb')), 'the quarantined index lost its table files')
  })
}
