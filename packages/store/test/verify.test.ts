import { test } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { isVerity } from '@strata/sys'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openStore, takeLease } from '../src/index.ts'

const bigText = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} line ${i} ${(i * 2654435761) % 1000003}\n`).join('')

const sample: Tree = {
  'etc': { dir: { 'app.conf': 'a=1\n', 'link': { symlink: 'app.conf' } } },
  'usr': { dir: { 'lib': { dir: { 'big.so': bigText('lib', 60_000) } } } },
  'z-link': { hardlink: 'usr/lib/big.so' },
  'a-link': { hardlink: 'etc/app.conf' },
  'fifo': { fifo: true },
  'setuid': { file: 'x', mode: 0o4755, uid: 1000, gid: 1000 },
  'gone': { whiteout: true },
  'opaque': { dir: { 'x': 'y' }, opaque: true },
  'empty': ''
}

/** Writes one byte over what is at `offset`, as a stray process or a bad disk would leave it. */
function flipByte (path: string, offset: number): void {
  const fd = openSync(path, 'r+')
  try {
    const b = Buffer.alloc(1)
    readSync(fd, b, 0, 1, offset)
    b[0] = b[0]! ^ 0xff
    writeSync(fd, b, 0, 1, offset)
  } finally {
    closeSync(fd)
  }
}

test('a committed layer checks ok on a hit until a byte of it changes; then it is marked and stays so', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), sample)
  const dataDir = join(dir, 'data')
  let store = await openStore({ dataDir })
  const info = await store.commit(join(dir, 'src'))
  assert.equal((await store.checkLayer(info.root)).status, 'ok')
  assert.equal((await store.checkLayer(info.root)).status, 'ok', 'a check changes nothing it checks')
  flipByte(join(info.path, 'usr/lib/big.so'), 1000)
  const c = await store.checkLayer(info.root)
  assert.equal(c.status, 'corrupt')
  assert.equal(await store.getLayer(info.root), undefined, 'a corrupt layer is not offered')
  await store.close()
  store = await openStore({ dataDir })
  t.after(() => store.close())
  assert.equal((await store.checkLayer(info.root)).status, 'corrupt', 'the mark is kept in the index')
  assert.deepEqual(await store.layerRoots(), [info.root.toString()])
})

test('a chmod or a new file in a layer dir fails the hit check too', async (t) => {
  const dir = tempDir(t)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  buildTree(join(dir, 'a'), { 'bin': { dir: { 'tool': 'x' } } })
  buildTree(join(dir, 'b'), { 'lib': { dir: { 'x.so': 'y' } } })
  const a = await store.commit(join(dir, 'a'))
  const b = await store.commit(join(dir, 'b'))
  chmodSync(join(a.path, 'bin/tool'), 0o4755)
  writeFileSync(join(b.path, 'lib/extra.so'), 'z')
  assert.equal((await store.checkLayer(a.root)).status, 'corrupt')
  assert.equal((await store.checkLayer(b.root)).status, 'corrupt')
})

test('verifyLayer re-hashes a layer: ok when intact, names the file with a flipped byte and marks the layer', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), sample)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(join(dir, 'src'))
  const ok = await store.verifyLayer(info.root)
  assert.equal(ok.status, 'ok')
  assert.equal(ok.bytes, info.size)
  flipByte(join(info.path, 'usr/lib/big.so'), 500_000)
  const bad = await store.verifyLayer(info.root)
  assert.equal(bad.status, 'corrupt')
  assert.equal(bad.path, 'usr/lib/big.so')
  assert.equal(bad.reason, 'content')
  const again = await store.verifyLayer(info.root)
  assert.deepEqual([again.status, again.marked, again.path], ['corrupt', true, 'usr/lib/big.so'])
  assert.equal((await store.checkLayer(info.root)).status, 'corrupt')
})

test('verifyLayer finds a changed inline file and a file added to the dir', async (t) => {
  const dir = tempDir(t)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  buildTree(join(dir, 'a'), { 'small.txt': 'hello world\n' })
  buildTree(join(dir, 'b'), { 'd': { dir: { 'k': 'v' } } })
  const a = await store.commit(join(dir, 'a'))
  const b = await store.commit(join(dir, 'b'))
  flipByte(join(a.path, 'small.txt'), 0)
  writeFileSync(join(b.path, 'd/planted'), 'x')
  assert.deepEqual(await pick(store.verifyLayer(a.root)), { status: 'corrupt', path: 'small.txt', reason: 'content' })
  assert.deepEqual(await pick(store.verifyLayer(b.root)), { status: 'corrupt', path: 'd/planted', reason: 'extra' })
})

async function pick (p: Promise<{ status: string, path?: string, reason?: string }>): Promise<{ status: string, path?: string, reason?: string }> {
  const { status, path, reason } = await p
  return { status, path, reason }
}

test('unpack of a layer with a flipped byte fails and marks the layer', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), { 'f': bigText('unpack', 20_000) })
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(join(dir, 'src'))
  flipByte(join(info.path, 'f'), 10)
  await assert.rejects(store.unpack(info.root, join(dir, 'out')), { code: 'ERR_BLOCK_MISMATCH' })
  assert.equal((await store.checkLayer(info.root)).status, 'corrupt')
})

test('committing the same tree again replaces a corrupt layer; a leased one is set aside until its lease ends', async (t) => {
  const dir = tempDir(t)
  const dataDir = join(dir, 'data')
  buildTree(join(dir, 'src'), sample)
  let store = await openStore({ dataDir })
  const info = await store.commit(join(dir, 'src'), { keepSource: true })
  const lease = takeLease(dataDir)
  lease.add(info.root.toString())
  flipByte(join(info.path, 'usr/lib/big.so'), 7)
  assert.equal((await store.checkLayer(info.root)).status, 'corrupt')
  const again = await store.commit(join(dir, 'src'), { keepSource: true })
  assert.equal(again.root.toString(), info.root.toString())
  assert.equal((await store.checkLayer(info.root)).status, 'ok')
  assert.equal((await store.verifyLayer(info.root)).status, 'ok')
  assert.equal(readFileSync(join(again.path, 'usr/lib/big.so'), 'utf8'), bigText('lib', 60_000))
  const aside = readdirSync(join(dataDir, 'aside'))
  assert.equal(aside.length, 1, 'the leased bad dir was set aside, not deleted')
  assert.ok(aside[0]!.startsWith(info.root.toString()))
  await store.close()
  store = await openStore({ dataDir })
  assert.equal(readdirSync(join(dataDir, 'aside')).length, 1, 'kept while its lease is held')
  lease.release()
  await store.close()
  store = await openStore({ dataDir })
  t.after(() => store.close())
  assert.deepEqual(readdirSync(join(dataDir, 'aside')), [], 'removed once the lease ended')
  // A commit clears setuid/setgid bits (a layer carries none): the rest is the source as it was.
  const expected = Object.fromEntries(Object.entries(describeTree(join(dir, 'src'))).map(([p, e]) => {
    const d = e as { mode: string }
    return [p, { ...d, mode: (parseInt(d.mode, 8) & ~0o6000).toString(8) }]
  }))
  assert.deepEqual(describeTree(info.path), expected)
})

test('a collection removes a corrupt layer', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), { 'f': 'some bytes' })
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(join(dir, 'src'))
  await store.markCorrupt(info.root, { reason: 'test' })
  const report = await store.gc({ maxSize: 1 << 30 })
  assert.deepEqual(report.removed.map((r) => [r.root, r.corrupt]), [[info.root.toString(), true]])
  assert.equal(existsSync(info.path), false)
  assert.deepEqual(await store.layerRoots(), [])
})

/** Why fs-verity cannot be tried on this machine, or undefined when it can. */
function noVerity (): string | undefined {
  try {
    const config = gunzipSync(readFileSync('/proc/config.gz')).toString()
    if (!/^CONFIG_FS_VERITY=y$/m.test(config)) return 'the kernel has no fs-verity: CONFIG_FS_VERITY is not set in /proc/config.gz'
  } catch {
    // No config to read: the mount below finds out.
  }
  try {
    execFileSync('mkfs.ext4', ['-V'], { stdio: 'ignore' })
  } catch {
    return 'mkfs.ext4 is not installed'
  }
  return undefined
}

test('on ext4 with fs-verity, committed layer files refuse writes and a hit still checks ok', { skip: noVerity() }, async (t) => {
  // One cleanup, in order: the store closes before the unmount, the unmount before the delete.
  const dir = mkdtempSync('/var/tmp/verify-verity-')
  const image = join(dir, 'fs.img')
  const mnt = join(dir, 'mnt')
  const opened: { store?: Awaited<ReturnType<typeof openStore>> } = {}
  let mounted = false
  t.after(async () => {
    try {
      await opened.store?.close()
    } finally {
      if (mounted) execFileSync('umount', [mnt])
      rmSync(dir, { recursive: true, force: true })
    }
  })
  mkdirSync(mnt)
  execFileSync('truncate', ['-s', '64M', image])
  execFileSync('mkfs.ext4', ['-q', '-F', '-O', 'verity', '-b', '4096', image])
  execFileSync('mount', ['-o', 'loop', image, mnt])
  mounted = true
  buildTree(join(mnt, 'src'), sample)
  const store = opened.store = await openStore({ dataDir: join(mnt, 'data') })
  const info = await store.commit(join(mnt, 'src'), { keepSource: true })
  const file = join(info.path, 'usr/lib/big.so')
  const fd = openSync(file, 'r')
  try {
    assert.equal(isVerity(fd), true, 'the committed file has fs-verity on')
  } finally {
    closeSync(fd)
  }
  assert.throws(() => openSync(file, 'r+'), 'the kernel refuses to open a verity file for writing')
  assert.equal((await store.checkLayer(info.root)).status, 'ok')
  assert.equal((await store.verifyLayer(info.root)).status, 'ok')
  await store.unpack(info.root, join(mnt, 'out'))
  assert.deepEqual(describeTree(join(mnt, 'out')), describeTree(join(mnt, 'src')))
})
