import assert from 'node:assert/strict'
import { existsSync, lstatSync, readlinkSync, statSync } from 'node:fs'
import { test } from 'node:test'
import { buildTree, describeTree, digestTree, tempDir, writeTree } from '../src/index.ts'

test('tempDir makes a fresh dir under /var/tmp and removes it after the test', () => {
  const hooks: Array<() => void> = []
  const dir = tempDir({ after: (fn) => hooks.push(fn) }, 'strata-testing-')
  assert.ok(dir.startsWith('/var/tmp/strata-testing-') && statSync(dir).isDirectory())
  for (const fn of hooks) fn()
  assert.equal(existsSync(dir), false)
})

test('writeTree writes files, bytes, links and dirs, with fixed times when asked', (t) => {
  const dir = `${tempDir(t)}/w`
  writeTree(dir, { a: 'x', b: Uint8Array.of(1, 2), l: { symlink: 'a' }, d: { e: 'y' } }, { mtime: 1_000_000 })
  assert.equal(readlinkSync(`${dir}/l`), 'a')
  assert.equal(statSync(`${dir}/d/e`).mtimeMs, 1_000_000_000)
  assert.equal(statSync(`${dir}/d`).mtimeMs, 1_000_000_000)
  assert.deepEqual(Object.keys(digestTree(dir)), ['a', 'b', 'd', 'd/e', 'l'])
  assert.equal(digestTree(dir)['d'], '<dir>')
})

test('buildTree and describeTree agree on what a tree holds', (t) => {
  const dir = `${tempDir(t)}/b`
  buildTree(dir, { f: { file: 'x', mode: 0o600, mtime: [5, 7] }, d: { dir: { g: 'y' }, mode: 0o700 }, h: { hardlink: 'f' } })
  const d = describeTree(dir)
  assert.equal((d.f as { mode: string }).mode, '100600')
  assert.equal((d.f as { mtime: string }).mtime, '5000000007')
  assert.equal((d.h as { inode: string }).inode, (d.f as { inode: string }).inode)
  assert.ok(lstatSync(`${dir}/d`).isDirectory())
})
