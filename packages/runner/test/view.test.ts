import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { lsetxattr, mknod, S_IFCHR } from '@strata/sys'
import { tempDir, writeTree } from '@strata/testing'
import { LayeredView } from '../src/view.ts'

function layers (root: string): { base: string, low: string, high: string } {
  const base = `${root}/base`
  const low = `${root}/low`
  const high = `${root}/high`
  writeTree(base, {
    etc: { hostname: 'base-host', keep: 'k' },
    old: { a: 'a', b: 'b', sub: { c: 'c' } },
    link: { symlink: '/etc/keep' },
    up: { symlink: '../..' }
  })
  writeTree(low, { etc: { hostname: 'low-host', added: 'x' }, old: { a: 'low-a' } })
  writeTree(high, { old: { fresh: 'f' }, etc: {} })
  mknod(`${high}/etc/hostname`, S_IFCHR | 0o000, 0, 0) // whiteout
  lsetxattr(`${high}/old`, 'trusted.overlay.opaque', Buffer.from('y'))
  return { base, low, high }
}

test('merges layers top-down: whiteouts hide, opaque dirs cut off, the top copy wins', (t) => {
  const { base, low, high } = layers(tempDir(t))
  const v = new LayeredView([high, low], base)
  assert.equal(v.stat('/etc/hostname'), undefined)
  assert.deepEqual(v.readdir('/etc'), ['added', 'keep'])
  assert.deepEqual(v.readdir('/old'), ['fresh'])
  assert.equal(v.stat('/old/a'), undefined)
  assert.equal(v.stat('/old/sub/c'), undefined)
  const added = v.stat('/etc/added')!
  assert.equal(added.hostPath, `${low}/etc/added`)

  const lowOnly = new LayeredView([low], base)
  assert.equal(readFileSync(lowOnly.stat('/etc/hostname')!.hostPath, 'utf8'), 'low-host')
  assert.deepEqual(lowOnly.readdir('/old'), ['a', 'b', 'sub'])
  assert.equal(readFileSync(lowOnly.stat('/old/a')!.hostPath, 'utf8'), 'low-a')
})

test('symlinks resolve inside the view, never outside it', (t) => {
  const { base, low } = layers(tempDir(t))
  const v = new LayeredView([low], base)
  const viaLink = v.stat('/link')!
  assert.equal(viaLink.path, '/etc/keep')
  assert.equal(viaLink.hostPath, `${base}/etc/keep`)
  assert.ok(v.lstat('/link')!.stats.isSymbolicLink())
  // "../.." from the root stays at the root, as under chroot.
  assert.equal(v.stat('/up/etc/keep')!.hostPath, `${base}/etc/keep`)
  assert.equal(v.stat('/../../etc/keep')!.hostPath, `${base}/etc/keep`)
})

test('a symlink loop is an error, a path through a file is absent', (t) => {
  const root = tempDir(t)
  writeTree(`${root}/base`, { a: { symlink: '/b' }, b: { symlink: '/a' }, f: 'x' })
  const v = new LayeredView([], `${root}/base`)
  assert.throws(() => v.stat('/a'), { code: 'ERR_INPUT_RESOLVE' })
  assert.equal(v.stat('/f/x'), undefined)
})
