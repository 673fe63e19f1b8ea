import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync, symlinkSync, lstatSync, rmSync, openSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { D, D_FAILED, DESCRIBE_FIELDS, describe, enableVerity, FileBatch, writeFiles, lgetxattrs, lsetxattr, mknod, lutimens, flock, SANDBOX_HELPER, statTree, statTreeAsync, S_IFCHR, S_IFIFO, X } from '../src/index.ts'

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

test('describe reports what lstat does, without following a symlink', (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'f')
  writeFileSync(file, 'hello')
  lutimens(file, [0, 0], [1_700_000_000, 987_654_321])
  symlinkSync('f', join(dir, 'l'))
  const out = new Float64Array(DESCRIBE_FIELDS)
  const data = new Uint8Array(8192)
  const one = (path: string): void => { describe(path, out, data, 4096) }
  one(file)
  const st = lstatSync(file, { bigint: true })
  assert.equal(out[X.mode], Number(st.mode))
  assert.equal(out[X.size], 5)
  assert.equal(out[X.mtimeSec], 1_700_000_000)
  assert.equal(out[X.mtimeNsec], 987_654_321)
  assert.equal(out[X.ino], Number(st.ino))
  assert.equal(out[X.nlink], 1)
  assert.equal(out[X.hasXattrs], 0)
  lsetxattr(file, 'user.k', Buffer.from('v'))
  one(file)
  assert.equal(out[X.hasXattrs], 1)
  one(join(dir, 'l'))
  assert.equal(out[X.mode]! & 0o170000, 0o120000)
  mknod(join(dir, 'wh'), S_IFCHR, 0, 0)
  one(join(dir, 'wh'))
  assert.deepEqual([out[X.rdevMajor], out[X.rdevMinor]], [0, 0])
  one(join(dir, 'missing'))
  assert.deepEqual([out[D.failed], out[D.errno]], [D_FAILED.lstat, 2]) // ENOENT
})

test('describe stats many paths in one call, reading small files and symlinks, with errors per path', (t) => {
  const dir = tempDir(t)
  mkdirSync(join(dir, 'd'))
  writeFileSync(join(dir, 'd', 'small'), 'hello')
  writeFileSync(join(dir, 'd', 'big'), Buffer.alloc(5000, 7))
  writeFileSync(join(dir, 'd', 'empty'), '')
  writeFileSync(join(dir, 'd', 'tagged'), 'xy')
  lsetxattr(join(dir, 'd', 'tagged'), 'user.k', Buffer.from('v'))
  symlinkSync('../target/ü', join(dir, 'd', 'link'))
  writeFileSync(join(dir, 'top'), 'abc')
  const names = ['d', 'd/small', 'd/big', 'd/empty', 'd/missing', 'd/tagged', 'd/link', 'top', 'nodir/x']
  const out = new Float64Array(names.length * DESCRIBE_FIELDS)
  const data = new Uint8Array(16 * 1024)
  const used = describe(names.map((n) => join(dir, n)).join('\0'), out, data, 4096)
  const at = (name: string, field: number): number => out[names.indexOf(name) * DESCRIBE_FIELDS + field]!
  const content = (name: string): string => Buffer.from(data.subarray(at(name, D.dataStart), at(name, D.dataStart) + at(name, D.dataLength))).toString()
  for (const name of ['d', 'd/small', 'd/big', 'd/tagged', 'top']) {
    const st = lstatSync(join(dir, name))
    assert.equal(at(name, X.mode), st.mode, name)
    assert.equal(at(name, X.size), st.size, name)
    assert.equal(at(name, X.ino), st.ino, name)
    assert.equal(at(name, D.failed), D_FAILED.none, name)
  }
  assert.equal(content('d/small'), 'hello')
  assert.equal(content('top'), 'abc')
  assert.equal(content('d/tagged'), 'xy')
  assert.equal(content('d/link'), '../target/ü')
  assert.equal(at('d/big', D.dataLength), -1, 'past inlineMax: left to the caller')
  assert.equal(at('d/empty', D.dataLength), -1)
  assert.equal(at('d/tagged', X.hasXattrs), 1)
  assert.equal(at('d/small', X.hasXattrs), 0)
  assert.equal(at('d/missing', D.failed), D_FAILED.lstat)
  assert.equal(at('d/missing', D.errno), 2) // ENOENT
  assert.equal(at('nodir/x', D.failed), D_FAILED.lstat)
  assert.equal(used, 5 + 2 + Buffer.byteLength('../target/ü') + 3)

  // Content that does not fit what is left of `data` is not read, and not an error.
  const tight = new Uint8Array(4)
  describe(join(dir, 'd/small'), out, tight, 4096)
  assert.equal(out[D.dataLength], -1)
  assert.equal(out[D.failed], D_FAILED.none)
  assert.equal(out[X.size], 5)
})

test('writeFiles creates a batch of files with content, mode, owner and nanosecond mtime, and stops at the first failure', (t) => {
  const dir = tempDir(t)
  mkdirSync(join(dir, 'a'))
  mkdirSync(join(dir, 'b'))
  writeFileSync(join(dir, 'b', 'taken'), 'old')
  symlinkSync('/etc/passwd', join(dir, 'b', 'link'))
  const batch = new FileBatch()
  batch.add(join(dir, 'a', 'plain'), 0o644, 0, 0, [1_700_000_000, 123_456_789], false, Buffer.from('hello'))
  batch.add(join(dir, 'a', 'setuid'), 0o4755, 1234, 5678, [1_600_000_000, 1], true, Buffer.from('#!/bin/sh\n'))
  batch.add(join(dir, 'a', 'empty'), 0o600, 0, 0, [1, 0], false, undefined)
  batch.add(join(dir, 'b', 'taken'), 0o644, 0, 0, [1, 0], false, Buffer.from('new'))
  batch.add(join(dir, 'b', 'after'), 0o644, 0, 0, [1, 0], false, Buffer.from('x'))
  assert.equal(batch.count, 5)
  const failed = writeFiles(batch.take(), 0o022)
  assert.deepEqual(failed, { index: 3, errno: 17, syscall: 'open' }) // EEXIST: never over an existing file
  assert.equal(batch.count, 0)
  const plain = statSync(join(dir, 'a', 'plain'), { bigint: true })
  assert.equal(plain.mode & 0o7777n, 0o644n)
  assert.equal(plain.mtimeNs, 1_700_000_000_123_456_789n)
  assert.equal(plain.atimeNs, 1_700_000_000_123_456_789n)
  assert.equal(readFileSync(join(dir, 'a', 'plain'), 'utf8'), 'hello')
  const setuid = statSync(join(dir, 'a', 'setuid'))
  assert.equal(setuid.mode & 0o7777, 0o4755, 'chmod after chown keeps setuid')
  assert.equal(setuid.uid, 1234)
  assert.equal(setuid.gid, 5678)
  assert.equal(statSync(join(dir, 'a', 'empty')).size, 0)
  assert.equal(statSync(join(dir, 'a', 'empty')).mode & 0o777, 0o600)
  assert.equal(readFileSync(join(dir, 'b', 'taken'), 'utf8'), 'old')
  assert.throws(() => statSync(join(dir, 'b', 'after')), { code: 'ENOENT' }, 'nothing written past the failure')

  // Never through a symlink.
  const through = new FileBatch()
  through.add(join(dir, 'b', 'link'), 0o644, 0, 0, [1, 0], false, Buffer.from('x'))
  assert.deepEqual(writeFiles(through.take(), 0o022), { index: 0, errno: 17, syscall: 'open' })
  assert.notEqual(readFileSync('/etc/passwd', 'utf8'), 'x')
})

test('the sandbox helper is built beside the module and refuses to run without its arguments', () => {
  // What it does inside a step is tested by the runner (packages/runner/test/sandbox.test.ts).
  const r = spawnSync(SANDBOX_HELPER, [], { encoding: 'utf8' })
  assert.equal(r.status, 2)
  assert.match(r.stderr, /^usage: strata-sandbox RUN_DIR/)
})

test('statTree lists every path once, sorted, never following a symlink; the async one says the same', async (t) => {
  const dir = tempDir(t)
  mkdirSync(join(dir, 'b'))
  writeFileSync(join(dir, 'b', 'file'), 'four')
  writeFileSync(join(dir, 'a'), '')
  symlinkSync('/etc', join(dir, 'c'))
  mknod(join(dir, 'wh'), S_IFCHR, 0, 0)
  const lines = statTree!(dir, 1 << 20).toString().split('\n').slice(0, -1).map((l) => l.split('\0'))
  assert.deepEqual(lines.map((l) => l[0]), ['', 'a', 'b', 'b/file', 'c', 'wh'])
  const file = lines[3]!
  const st = lstatSync(join(dir, 'b', 'file'), { bigint: true })
  assert.deepEqual(file, ['b/file', String(st.ino), String(st.mode), String(st.ctimeNs), '4'])
  assert.equal(lines[5]![3], '0', 'a whiteout has no ctime in the lines')
  assert.deepEqual(await statTreeAsync!(dir, 1 << 20), statTree!(dir, 1 << 20))
  assert.throws(() => statTree!(dir, 16), { code: 'E2BIG' })
  await assert.rejects(statTreeAsync!(join(dir, 'nope'), 1 << 20), { code: 'ENOENT' })
})

test('statTree with a dir to skip lists that dir but nothing below it', async (t) => {
  const dir = tempDir(t)
  mkdirSync(join(dir, 'keep', 'data', 'deep'), { recursive: true })
  writeFileSync(join(dir, 'keep', 'data', 'deep', 'f'), 'x')
  writeFileSync(join(dir, 'keep', 'g'), 'y')
  const names = (b: Buffer): string[] => b.toString().split('\n').slice(0, -1).map((l) => l.split('\0')[0]!)
  assert.deepEqual(names(statTree!(dir, 1 << 20, 'keep/data')), ['', 'keep', 'keep/data', 'keep/g'])
  assert.deepEqual(names(await statTreeAsync!(dir, 1 << 20, 'keep/data')), ['', 'keep', 'keep/data', 'keep/g'])
  assert.deepEqual(names(statTree!(dir, 1 << 20)), ['', 'keep', 'keep/data', 'keep/data/deep', 'keep/data/deep/f', 'keep/g'])
})

test('enableVerity fails with ENOTSUP or ENOTTY where the filesystem has no fs-verity, and changes nothing', (t) => {
  const dir = tempDir(t)
  writeFileSync(join(dir, 'f'), 'x')
  const fd = openSync(join(dir, 'f'), 'r')
  try {
    let enabled: boolean | undefined
    try {
      enabled = enableVerity(fd)
    } catch (err) {
      assert.ok(['ENOTSUP', 'ENOTTY'].includes((err as NodeJS.ErrnoException).code ?? ''), String(err))
    }
    if (enabled === undefined) writeFileSync(join(dir, 'f'), 'still writable')
  } finally {
    closeSync(fd)
  }
})

test('malloc trim gives the free pages inside the heap back, which reuse alone keeps resident', () => {
  // In a process of its own: Buffers' backing stores come from malloc; one in 64 is kept,
  // so the freed ones leave holes that the heap's top cannot give back.
  const child = `
    import { mallocInfo, mallocTrim } from ${JSON.stringify(new URL('../src/index.ts', import.meta.url).href)}
    const rss = () => Number(process.memoryUsage.rss())
    let bufs = []
    for (let i = 0; i < 40000; i++) bufs.push(Buffer.allocUnsafeSlow(1024 + (i % 3) * 1024).fill(1))
    bufs = bufs.filter((_, i) => i % 64 === 0)
    globalThis.gc(); globalThis.gc()
    const before = { info: mallocInfo(), rss: rss() }
    const released = mallocTrim()
    const after = { info: mallocInfo(), rss: rss() }
    console.log(JSON.stringify({ before, released, after, kept: bufs.length }))
  `
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', child], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 0, r.stderr)
  const { before, released, after } = JSON.parse(r.stdout) as { before: { info: { heap: number, inUse: number, free: number }, rss: number }, released: boolean, after: { info: { free: number }, rss: number } }
  const MB = 2 ** 20
  // ~80 MB were handed out and freed again: malloc holds them free, and they stay resident.
  assert.ok(before.info.free > 50 * MB, `free ${before.info.free}`)
  assert.ok(before.info.inUse < before.info.heap, 'in use is part of the heap')
  assert.equal(released, true)
  // The trim leaves malloc's bookkeeping as it was (the chunks stay free) and the pages go.
  assert.ok(Math.abs(after.info.free - before.info.free) < 4 * MB, `free ${before.info.free} -> ${after.info.free}`)
  assert.ok(before.rss - after.rss > 40 * MB, `rss ${before.rss} -> ${after.rss}`)
})
