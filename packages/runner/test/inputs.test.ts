import { test } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync } from 'node:fs'
import { lsetxattr, mknod, S_IFCHR, S_IFIFO } from '@strata/sys'
import { tempDir, writeTree } from '@strata/testing'
import { collectInputs } from '../src/inputs.ts'
import { digestKey, inputDigest } from '../src/key.ts'
import { LayeredView } from '../src/view.ts'

const sha = (s: string): Buffer => inputDigest().update(s).digest()

function view (root: string): LayeredView {
  writeTree(`${root}/base`, {
    app: { 'package.json': '{}', src: { 'a.ts': 'A', 'b.js': 'B', deep: { 'c.ts': 'C' } }, 'run.sh': '#!/bin/sh', gone: 'g' },
    lnk: { symlink: 'app/package.json' }
  })
  chmodSync(`${root}/base/app/run.sh`, 0o755)
  writeTree(`${root}/layer`, { app: { src: { 'a.ts': 'A2' } } })
  mknod(`${root}/layer/app/gone`, S_IFCHR, 0, 0)
  return new LayeredView([`${root}/layer`], `${root}/base`)
}

test('plain paths and globs resolve in the merged view, sorted, with content digests', async (t) => {
  const v = view(tempDir(t))
  const got = await collectInputs('s', ['/app/src/**/*.ts', '/app/package.json', '/app/run.sh'], v)
  assert.deepEqual(got.map((e) => e.path), ['/app/package.json', '/app/run.sh', '/app/src/a.ts', '/app/src/deep/c.ts'])
  const a = got.find((e) => e.path === '/app/src/a.ts')!
  assert.deepEqual(Buffer.from(a.digest!), sha('A2'), 'the upper layer\'s copy is what the step sees')
  assert.equal(got.find((e) => e.path === '/app/run.sh')!.exec, true)
  assert.equal(got.find((e) => e.path === '/app/package.json')!.exec, false)
})

test('a directory input stands for its whole subtree; a plain symlink is followed', async (t) => {
  const v = view(tempDir(t))
  const got = await collectInputs('s', ['/app/src', '/lnk'], v)
  assert.deepEqual(got.map((e) => `${e.path}:${e.type}`), ['/app/src:dir', '/app/src/a.ts:file', '/app/src/b.js:file', '/app/src/deep:dir', '/app/src/deep/c.ts:file', '/lnk:file'])
  assert.deepEqual(Buffer.from(got.at(-1)!.digest!), sha('{}'))
})

test('a missing plain input fails; a whited-out one is missing; an empty glob is fine', async (t) => {
  const v = view(tempDir(t))
  await assert.rejects(collectInputs('s', ['/app/nope'], v), { code: 'ERR_INPUT_NOT_FOUND', path: '/app/nope' })
  await assert.rejects(collectInputs('s', ['/app/gone'], v), { code: 'ERR_INPUT_NOT_FOUND' })
  assert.deepEqual(await collectInputs('s', ['/app/**/*.rs', '/nowhere/*'], v), [])
})

test('inputs are bounded in count and bytes; special files are never read', async (t) => {
  const root = tempDir(t)
  const v = view(root)
  await assert.rejects(collectInputs('s', ['/app'], v, { maxFiles: 3 }), { code: 'ERR_INPUT_LIMIT', limit: 'files', max: 3, message: /raise --max-input-files/ })
  await assert.rejects(collectInputs('s', ['/app'], v, { maxBytes: 4 }), { code: 'ERR_INPUT_LIMIT', limit: 'bytes', max: 4, message: /raise --max-input-bytes/ })
  mknod(`${root}/base/app/fifo`, S_IFIFO | 0o644)
  const got = await collectInputs('s', ['/app/fifo'], v)
  assert.deepEqual(got, [{ path: '/app/fifo', type: 'other' }])
})

test('an opaque directory hides the base copy of its contents', async (t) => {
  const root = tempDir(t)
  writeTree(`${root}/base`, { d: { old: 'o' } })
  writeTree(`${root}/layer`, { d: { new: 'n' } })
  lsetxattr(`${root}/layer/d`, 'trusted.overlay.opaque', Buffer.from('y'))
  const got = await collectInputs('s', ['/d'], new LayeredView([`${root}/layer`], `${root}/base`))
  assert.deepEqual(got.map((e) => e.path), ['/d', '/d/new'])
})

test('file digests are keyed by the digest key given', async (t) => {
  const v = view(tempDir(t))
  const key = digestKey('pipeline-salt', 'fleet-salt')
  const [plain] = await collectInputs('s', ['/app/package.json'], v)
  const [salted] = await collectInputs('s', ['/app/package.json'], v, {}, { digestKey: key })
  assert.deepEqual(Buffer.from(plain!.digest!), sha('{}'))
  assert.deepEqual(Buffer.from(salted!.digest!), inputDigest(key).update('{}').digest())
  assert.notDeepEqual(Buffer.from(salted!.digest!), Buffer.from(plain!.digest!))
})
