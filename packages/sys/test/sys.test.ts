import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync, symlinkSync, lstatSync, rmSync, openSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { lgetxattrs, lsetxattr, lstatx, mknod, lutimens, flock, S_IFCHR, S_IFIFO, X } from '../src/index.ts'

function tempDir (t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-sys-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('sets and lists extended attributes in name order', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'f')
  writeFileSync(file, 'x')
  assert.deepEqual(lgetxattrs(file), [])
  lsetxattr(file, 'user.b', Buffer.from('two'))
  lsetxattr(file, 'user.a', new Uint8Array([0, 1, 255]))
  lsetxattr(file, 'user.empty', new Uint8Array(0))
  const got = lgetxattrs(file).map(([n, v]) => [n, [...v]])
  assert.deepEqual(got, [['user.a', [0, 1, 255]], ['user.b', [...Buffer.from('two')]], ['user.empty', []]])
})

test('accepts non-UTF-8 file names as bytes', (t) => {
  const dir = tempDir(t)
  const name = Buffer.concat([Buffer.from(dir + '/'), Buffer.from([0x66, 0xff, 0xfe])])
  writeFileSync(name, 'x')
  lsetxattr(name, 'user.k', Buffer.from('v'))
  assert.equal(lgetxattrs(name)[0]?.[0], 'user.k')
})

test('makes whiteouts and FIFOs', (t) => {
  const dir = tempDir(t)
  mknod(join(dir, 'wh'), S_IFCHR, 0, 0)
  const st = lstatSync(join(dir, 'wh'))
  assert.ok(st.isCharacterDevice())
  assert.equal(st.rdev, 0)
  mknod(join(dir, 'fifo'), S_IFIFO | 0o640)
  assert.ok(lstatSync(join(dir, 'fifo')).isFIFO())
  assert.throws(() => mknod(join(dir, 'fifo'), S_IFIFO), { code: 'EEXIST' })
})

test('sets nanosecond times on a symlink without touching its target', (t) => {
  const dir = tempDir(t)
  writeFileSync(join(dir, 'target'), 'x')
  symlinkSync('target', join(dir, 'link'))
  const before = lstatSync(join(dir, 'target'), { bigint: true }).mtimeNs
  lutimens(join(dir, 'link'), [1_600_000_000, 5], [1_700_000_000, 123_456_789])
  const st = lstatSync(join(dir, 'link'), { bigint: true })
  assert.equal(st.mtimeNs, 1_700_000_000_123_456_789n)
  assert.equal(lstatSync(join(dir, 'target'), { bigint: true }).mtimeNs, before)
})

test('reports a held lock without blocking', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'lock')
  writeFileSync(file, '')
  const fd = openSync(file, 'r')
  t.after(() => closeSync(fd))
  assert.equal(flock(fd, { exclusive: true, wait: false }), true)
  // Another process must see the lock as held.
  const other = spawnSync('flock', ['-n', '-x', file, 'true'])
  assert.equal(other.status, 1)
})

test('names the failing path in system errors', () => {
  assert.throws(() => lgetxattrs('/nonexistent/strata'), (err: NodeJS.ErrnoException) =>
    err.code === 'ENOENT' && err.path === '/nonexistent/strata' && err.syscall === 'llistxattr')
})

test('lstatx reports what lstat does, without following a symlink', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'f')
  writeFileSync(file, 'hello')
  lutimens(file, [0, 0], [1_700_000_000, 987_654_321])
  symlinkSync('f', join(dir, 'l'))
  const out = new Float64Array(12)
  lstatx(file, out)
  const st = lstatSync(file, { bigint: true })
  assert.equal(out[X.mode], Number(st.mode))
  assert.equal(out[X.size], 5)
  assert.equal(out[X.mtimeSec], 1_700_000_000)
  assert.equal(out[X.mtimeNsec], 987_654_321)
  assert.equal(out[X.ino], Number(st.ino))
  assert.equal(out[X.nlink], 1)
  assert.equal(out[X.hasXattrs], 0)
  lsetxattr(file, 'user.k', Buffer.from('v'))
  lstatx(file, out)
  assert.equal(out[X.hasXattrs], 1)
  lstatx(join(dir, 'l'), out)
  assert.equal(out[X.mode]! & 0o170000, 0o120000)
  mknod(join(dir, 'wh'), S_IFCHR, 0, 0)
  lstatx(join(dir, 'wh'), out)
  assert.deepEqual([out[X.rdevMajor], out[X.rdevMinor]], [0, 0])
  assert.throws(() => lstatx(join(dir, 'missing'), out), { code: 'ENOENT', syscall: 'lstat' })
})
