import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, existsSync, openSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { ClassicLevel } from 'classic-level'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openStore, FAILPOINTS } from '../src/index.ts'
import type { FailpointName } from '../src/index.ts'
import { MBLOCK, PENDING } from '../src/keys.ts'
import { assertConsistent, runChild } from './helpers.ts'

const child = join(import.meta.dirname, 'fixtures', 'failpoint-child.ts')
const text = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} ${i} ${(i * 2654435761) % 1000003}\n`).join('')
const tree: Tree = {
  'big.bin': text('big', 40_000),
  'etc': { dir: { 'a.conf': 'a=1\n', 'b.conf': text('b', 3000) } },
  'gone': { whiteout: true }
}

/** Whether the layer must be there after a kill at each point: after the rename a commit is complete; a removal, once marked, is finished. */
const survives: Record<FailpointName, boolean> = {
  'commit:manifest-partial': false,
  'commit:manifest-written': false,
  'commit:renamed': true,
  'commit:located': true,
  'restore:materialized': false,
  'restore:manifest-written': false,
  'restore:renamed': true,
  'restore:located': true,
  'gc:marked': false,
  'gc:moved': false,
  'gc:unindexed': false
}

for (const point of FAILPOINTS) {
  test(`kill -9 at ${point}: the store reopens consistent, with the layer ${survives[point] ? 'complete' : 'absent'}`, async (t) => {
    const dir = tempDir(t)
    const data = join(dir, 'data')
    const template = join(dir, 'template')
    buildTree(template, tree)
    const expected = describeTree(template)
    const src = join(dir, 'src')
    execFileSync('cp', ['-a', template, src])
    const [op] = point.split(':')
    let root: string
    let args: string[]
    if (op === 'commit') {
      // Learn the root from a commit elsewhere (same tree, same times: same root).
      const other = await openStore({ dataDir: join(dir, 'other') })
      execFileSync('cp', ['-a', template, join(dir, 'src2')])
      root = (await other.commit(join(dir, 'src2'))).root.toString()
      await other.close()
      args = ['commit', data, src]
    } else if (op === 'restore') {
      const producer = await openStore({ dataDir: join(dir, 'producer') })
      root = (await producer.commit(src)).root.toString()
      await producer.close()
      args = ['restore', data, join(dir, 'producer'), root]
    } else {
      const store = await openStore({ dataDir: data })
      root = (await store.commit(src)).root.toString()
      await store.close()
      args = ['gc', data]
    }
    const ended = await runChild(child, args, { STRATA_FAILPOINT: point })
    assert.equal(ended.signal, 'SIGKILL', `the child did not reach ${point}: ${ended.stderr}`)
    const roots = await assertConsistent(data, new Map([[root, expected]]), dir)
    assert.deepEqual(roots, survives[point] ? [root] : [])
    if (point === 'commit:manifest-written' || point === 'commit:manifest-partial') assert.deepEqual(describeTree(src), expected, 'the source of a commit killed before its rename moved or changed')
    // The same operation, run again without a failpoint, completes.
    if (op === 'commit' && !survives[point]) args[2] = src
    if (op === 'commit' && survives[point]) execFileSync('cp', ['-a', template, src])
    const again = await runChild(child, args)
    assert.equal(again.code, 0, again.stderr)
    assert.deepEqual(await assertConsistent(data, new Map([[root, expected]]), dir), op === 'gc' ? [] : [root])
  })
}

test('a layer dir whose commit was interrupted after its rename is dropped at reopen when its content no longer verifies', async (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'src'), tree)
  const ended = await runChild(child, ['commit', data, join(dir, 'src')], { STRATA_FAILPOINT: 'commit:renamed' })
  assert.equal(ended.signal, 'SIGKILL')
  const db = new ClassicLevel<string, string>(join(data, 'index'))
  const pending: string[] = []
  for await (const k of db.keys(PENDING.range)) pending.push(PENDING.id(k))
  await db.close()
  assert.equal(pending.length, 1)
  const fd = openSync(join(data, 'layers', pending[0]!, 'big.bin'), 'r+')
  writeSync(fd, 'X', 100)
  closeSync(fd)
  assert.deepEqual(await assertConsistent(data, new Map(), dir), [])
  assert.equal(existsSync(join(data, 'layers', pending[0]!)), false)
})

test('a commit killed between the batches of a large manifest leaves no layer and no manifest block behind', async (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  // 1,500 files of 4,000 bytes go inline: ~6 MB of manifest, written in more than one batch.
  const files: Tree = {}
  for (let i = 0; i < 1500; i++) files[`f${String(i).padStart(4, '0')}`] = text(`small-${i}`, 400).slice(0, 4000)
  buildTree(join(dir, 'template'), files)
  const expected = describeTree(join(dir, 'template'))
  execFileSync('cp', ['-a', join(dir, 'template'), join(dir, 'src')])
  const ended = await runChild(child, ['commit', data, join(dir, 'src')], { STRATA_FAILPOINT: 'commit:manifest-partial' })
  assert.equal(ended.signal, 'SIGKILL', ended.stderr)
  const db = new ClassicLevel<string, string>(join(data, 'index'))
  let written = 0
  for await (const _ of db.keys(MBLOCK.range)) written++
  await db.close()
  assert.ok(written > 0, 'the kill came after a first batch of manifest blocks')
  // Reopening sweeps them (assertConsistent checks that no key is left without its layer).
  assert.deepEqual(await assertConsistent(data, new Map(), dir), [])
  const again = await runChild(child, ['commit', data, join(dir, 'src')])
  assert.equal(again.code, 0, again.stderr)
  const other = await openStore({ dataDir: join(dir, 'other') })
  execFileSync('cp', ['-a', join(dir, 'template'), join(dir, 'src2')])
  const root = (await other.commit(join(dir, 'src2'))).root.toString()
  await other.close()
  assert.deepEqual(await assertConsistent(data, new Map([[root, expected]]), dir), [root])
})
