import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openStore } from '../src/index.ts'
import { assertConsistent } from './helpers.ts'

/** A tmpfs of `size` mounted on a new dir; unmounted, then the dir removed, after the test. */
function smallDisk (t: { after: (fn: () => void) => void }, size: string): string {
  const mnt = mkdtempSync(join(tmpdir(), 'strata-disk-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', mnt])
  t.after(() => {
    execFileSync('umount', [mnt])
    rmSync(mnt, { recursive: true, force: true })
  })
  return mnt
}

/** Writes `path` until the filesystem is full. */
function fill (path: string): void {
  const fd = openSync(path, 'w')
  const chunk = Buffer.alloc(64 * 1024, 1)
  try {
    for (;;) writeSync(fd, chunk)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
  } finally {
    closeSync(fd)
  }
}

const manyFiles = (n: number): Tree => Object.fromEntries(Array.from({ length: n }, (_, i) => [`file-${i}.txt`, `content ${i}\n`]))

test('a commit on a full disk fails cleanly: the source stays, staging is empty, the store reopens consistent', async (t) => {
  const disk = smallDisk(t, '16m')
  const data = join(disk, 'data')
  const src = join(disk, 'src')
  const scratch = tempDir(t)
  let store = await openStore({ dataDir: data })
  try {
    buildTree(src, { 'many': { dir: manyFiles(400) } })
    fill(join(src, 'fill.bin'))
    const expected = describeTree(src)
    await assert.rejects(store.commit(src), (err: Error & { code?: string, cause?: Error & { code?: string } }) => {
      assert.equal(err.code, 'ERR_COMMIT')
      assert.match(err.message, /No space left|ENOSPC|IO error/i)
      return true
    })
    assert.deepEqual(describeTree(src), expected, 'the source of a failed commit changed')
    assert.deepEqual(readdirSync(join(data, 'staging')), [])
    assert.deepEqual(readdirSync(join(data, 'layers')), [])
  } finally {
    await store.close()
  }
  // With room again, the store is consistent and the same commit succeeds.
  rmSync(join(src, 'fill.bin'))
  assert.deepEqual(await assertConsistent(data, new Map(), scratch), [])
  const expected = describeTree(src)
  store = await openStore({ dataDir: data })
  try {
    const layer = await store.commit(src)
    assert.deepEqual(describeTree(layer.path), expected)
  } finally {
    await store.close()
  }
})

test('a restore onto a full disk fails cleanly: staging is removed and the store reopens consistent', async (t) => {
  const disk = smallDisk(t, '4m')
  const scratch = tempDir(t)
  const producer = await openStore({ dataDir: join(scratch, 'producer') })
  t.after(() => producer.close())
  buildTree(join(scratch, 'big'), { 'a.bin': randomBytes(3 << 20), 'b.bin': randomBytes(3 << 20) })
  const layer = await producer.commit(join(scratch, 'big'))
  const data = join(disk, 'data')
  const consumer = await openStore({ dataDir: data })
  try {
    await assert.rejects(consumer.restore(layer.root, producer), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_COMMIT')
      assert.match(err.message, /no space left|ENOSPC/i)
      return true
    })
    assert.deepEqual(readdirSync(join(data, 'staging')), [], 'the staging dir of the failed restore is still there')
    assert.equal(await consumer.has(layer.root), false)
  } finally {
    await consumer.close()
  }
  assert.deepEqual(await assertConsistent(data, new Map(), scratch), [])
})
