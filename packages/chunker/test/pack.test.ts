import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { FsPool, packTree, readManifest } from '../src/index.ts'
import type { Entry, PackOptions } from '../src/index.ts'

async function entriesOf (dir: string, opts: PackOptions = {}): Promise<Entry[]> {
  const packed = await packTree(dir, opts)
  const blocks = new Map(packed.blocks.map((b) => [b.cid.toString(), b.bytes]))
  const out: Entry[] = []
  for await (const e of readManifest(packed.root, async (cid) => blocks.get(cid.toString())!)) out.push(e)
  return out
}

/** `n` small files, enough to fill several of the batches the walk hands to workers. */
function filler (n: number): Tree {
  const files: Tree = {}
  for (let i = 0; i < n; i++) files[`f${String(i).padStart(4, '0')}`] = `filler ${i}`
  return files
}

test('hardlinks whose paths are read by different workers: the first path in manifest order is the file', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, {
    'a': { dir: { 'first': 'x'.repeat(300_000) } },
    'b': { dir: filler(700) },
    'c': { dir: { 'second': { hardlink: 'a/first' } } },
    'd': { dir: filler(700) },
    'e': { dir: { 'third': { hardlink: 'a/first' } } }
  })
  const pool = new FsPool(3)
  t.after(() => pool.close())
  const entries = await entriesOf(src, { pool })
  const byPath = new Map(entries.map((e) => [e.path, e]))
  assert.equal(byPath.get('a/first')!.type, 'file')
  assert.equal(byPath.get('a/first')!.size, 300_000)
  for (const p of ['c/second', 'e/third']) {
    assert.equal(byPath.get(p)!.type, 'hardlink')
    assert.equal(byPath.get(p)!.target, 'a/first')
  }
  assert.equal(entries.length, 5 + 3 + 1400)
  assert.deepEqual(entries.map((e) => e.path).slice(0, 4), ['a', 'a/first', 'b', 'b/f0000'])
})

/** Bytes this process has read through read(2) and the like, from /proc/self/io. */
function bytesRead (): number {
  return Number(/^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))![1])
}

test('a hardlinked file is read once by a worker, not once for each of its paths', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  const size = 16 * 1024 * 1024
  // Its paths in three batches; one worker takes them all in the walk's order.
  buildTree(src, {
    'a': { dir: { 'big': 'y'.repeat(size) } },
    'b': { dir: { ...filler(300), 'link': { hardlink: 'a/big' } } },
    'c': { dir: { ...filler(300), 'link': { hardlink: 'a/big' } } },
    'd': { dir: { ...filler(300), 'link': { hardlink: 'a/big' } } }
  })
  const pool = new FsPool(1)
  t.after(() => pool.close())
  await entriesOf(join(dir, 'src'), { pool, inlineMax: 0 }) // the pool's own start-up reads, out of the count
  const before = bytesRead()
  const entries = await entriesOf(src, { pool })
  const read = bytesRead() - before
  assert.ok(read >= size && read < 2 * size, `read ${read} bytes for a ${size}-byte file with four paths`)
  const byPath = new Map(entries.map((e) => [e.path, e]))
  assert.equal(byPath.get('a/big')!.type, 'file')
  assert.equal(byPath.get('a/big')!.chunks!.reduce((n, c) => n + c.length, 0), size)
  for (const p of ['b/link', 'c/link', 'd/link']) assert.equal(byPath.get(p)!.target, 'a/big')

  // Another walk of the same tree reads it again: the record is per walk.
  const again = bytesRead()
  await entriesOf(src, { pool })
  assert.ok(bytesRead() - again >= size)
})

test('a file that reads shorter than its size fails the pack with ERR_CHANGED, naming it', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { 'a': { dir: filler(600) }, 'z': { dir: { 'short': '' } } })
  // A sysfs file claims a page and holds a few bytes: a file that shrank after its lstat.
  const short = join(src, 'z', 'short')
  execFileSync('mount', ['--bind', '/sys/kernel/uevent_seqnum', short])
  try {
    await assert.rejects(packTree(src), { code: 'ERR_CHANGED', path: 'z/short' })
  } finally {
    execFileSync('umount', [short])
  }
})

test('an entry the format cannot carry is named, wherever its batch ends up', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  const xattrs: Record<string, string> = {}
  for (let i = 0; i < 65; i++) xattrs[`user.a${i}`] = 'v'
  buildTree(src, { 'a': { dir: filler(600) }, 'm': { dir: { 'many-xattrs': { file: 'x', xattrs } } }, 'z': { dir: filler(600) } })
  await assert.rejects(packTree(src), { code: 'ERR_UNSUPPORTED_ENTRY', path: 'm/many-xattrs', message: /more than 64 extended attributes/ })
})

test('stops with ABORT_ERR when the signal aborts partway', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { 'a': { dir: filler(3000) } })
  const controller = new AbortController()
  const progress: number[] = []
  await assert.rejects(packTree(src, {
    signal: controller.signal,
    onProgress: (p) => {
      progress.push(p.entries)
      controller.abort()
    }
  }), { code: 'ABORT_ERR' })
  assert.equal(progress.length, 1)
})

test('two trees that differ only in mtimes share every entry-list block; only the times blocks and the root differ', async (t) => {
  const dir = tempDir(t)
  // The same content, every file and directory stamped with another time, as two installs do.
  const tree = (mtime: [number, number]): Tree => {
    const out: Tree = {}
    for (let p = 0; p < 40; p++) {
      const pkg: Tree = {}
      for (let i = p; i < 3000; i += 40) pkg[`file-${i}.js`] = { file: `module.exports = ${i}\n`, mtime }
      out[`pkg${p}`] = { dir: pkg, mtime }
    }
    return out
  }
  buildTree(join(dir, 'a'), tree([1_700_000_000, 1]))
  buildTree(join(dir, 'b'), tree([1_700_000_500, 2]))
  const a = await packTree(join(dir, 'a'))
  const b = await packTree(join(dir, 'b'))
  assert.notEqual(a.root.toString(), b.root.toString())
  // Blocks after the root: each entry list, then its times block.
  const listsOf = (blocks: typeof a.blocks): string[] => blocks.slice(1).filter((_, i) => i % 2 === 0).map((x) => x.cid.toString())
  const timesOf = (blocks: typeof a.blocks): string[] => blocks.slice(1).filter((_, i) => i % 2 === 1).map((x) => x.cid.toString())
  assert.ok(listsOf(a.blocks).length > 1, 'the tree should take several entry lists')
  assert.deepEqual(listsOf(b.blocks), listsOf(a.blocks))
  assert.equal(timesOf(b.blocks).filter((c) => timesOf(a.blocks).includes(c)).length, 0)
  // The same tree packed again gives the same root.
  assert.equal((await packTree(join(dir, 'a'))).root.toString(), a.root.toString())
})
