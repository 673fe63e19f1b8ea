import { test } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, closeSync, openSync, renameSync, rmSync, utimesSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { buildTree, tempDir } from '@strata/testing'
import { fingerprint } from '../src/fingerprint.ts'

const tree = {
  'a': { dir: { 'é.txt': 'accent', 'z': 'last', 'B': 'upper', 'ñ': { dir: { 'deep': 'x' } } } },
  'link': { symlink: 'a/z' },
  'hard': { hardlink: 'a/z' },
  'gone': { whiteout: true as const },
  '\uff21-wide': 'fullwidth'
}

test('the native walk and the node:fs walk give the same fingerprint', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 't'), tree)
  const native = await fingerprint(join(dir, 't'))
  const js = await fingerprint(join(dir, 't'), { native: false })
  assert.deepEqual(native, js)
  assert.equal(native.paths, 11, 'the root and its ten paths')
})

test('every change made through the filesystem changes the fingerprint, even with times set back', async (t) => {
  const dir = tempDir(t)
  const root = join(dir, 't')
  buildTree(root, tree)
  const changes: Array<[string, () => void]> = [
    ['a write of the same length', () => {
      const fd = openSync(join(root, 'a/z'), 'r+')
      writeSync(fd, 'L', 0)
      closeSync(fd)
      utimesSync(join(root, 'a/z'), 1, 1)
    }],
    ['a chmod', () => chmodSync(join(root, 'a/B'), 0o600)],
    ['a new file', () => writeFileSync(join(root, 'a/ñ/new'), '')],
    ['a removed file', () => rmSync(join(root, 'a/é.txt'))],
    ['a rename', () => renameSync(join(root, '\uff21-wide'), join(root, 'other'))]
  ]
  let before = await fingerprint(root)
  for (const [what, change] of changes) {
    change()
    const after = await fingerprint(root)
    assert.notEqual(after.digest, before.digest, what)
    assert.deepEqual(await fingerprint(root, { native: false }), after, `${what}: both walks agree`)
    before = after
  }
  assert.deepEqual(await fingerprint(root), before, 'reading changes nothing')
})
