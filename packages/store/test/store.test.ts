import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'
import { execFileSync, spawn } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { ClassicLevel } from 'classic-level'
import type { CID } from 'multiformats/cid'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openStore } from '../src/index.ts'
import type { BlockSource } from '../src/index.ts'
import { K_VERSION, LAYER, PENDING } from '../src/keys.ts'
import { FsPool } from '@strata/chunker'

const bigText = (seed: string, n: number): string => Array.from({ length: n }, (_, i) => `${seed} line ${i} ${(i * 2654435761) % 1000003}\n`).join('')

const sample: Tree = {
  'etc': { dir: { 'app.conf': 'a=1\n', 'link': { symlink: 'app.conf' } } },
  'usr': { dir: { 'lib': { dir: { 'big.so': bigText('lib', 60_000), 'same.so': bigText('lib', 60_000) } } } },
  'gone': { whiteout: true },
  'opaque': { dir: { 'x': 'y' }, opaque: true },
  'empty': ''
}

test('commits a directory by moving it, and unpacks it identically', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, sample)
  const expected = describeTree(src)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(src)
  assert.equal(existsSync(src), false, 'the source was moved, not copied')
  assert.equal(info.path, join(dir, 'data', 'layers', info.root.toString()))
  assert.deepEqual(describeTree(info.path), expected)
  assert.equal(info.entries, 11)
  assert.equal(await store.has(info.root), true)
  assert.deepEqual((await store.listLayers()).map((l) => l.root.toString()), [info.root.toString()])
  await store.unpack(info.root, join(dir, 'out'))
  assert.deepEqual(describeTree(join(dir, 'out')), expected)
})

test('a store given file workers packs and unpacks with them and leaves them running when it closes', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), sample)
  const expected = describeTree(join(dir, 'src'))
  const pool = new FsPool(1)
  t.after(() => pool.close())
  const store = await openStore({ dataDir: join(dir, 'data'), pool })
  const info = await store.commit(join(dir, 'src'))
  await store.unpack(info.root, join(dir, 'out'))
  assert.deepEqual(describeTree(join(dir, 'out')), expected)
  await store.close()
  const reply = await pool.request({ kind: 'entries', paths: join(dir, 'out', 'etc', 'app.conf'), inlineMax: 4096, maxFileSize: 1 << 20, walk: 1 })
  assert.equal(reply.error, undefined)
  assert.equal(Buffer.from(reply.entries!.data).toString(), 'a=1\n', 'the pool still answers after the store closed')
  // And the store used the pool it was given: with that pool ended, a commit fails.
  await pool.close()
  buildTree(join(dir, 'src2'), { 'f': 'x' })
  const again = await openStore({ dataDir: join(dir, 'data'), pool })
  t.after(() => again.close())
  await assert.rejects(again.commit(join(dir, 'src2')), /the fs worker pool is closed/)
  assert.equal(existsSync(join(dir, 'src2', 'f')), true, 'the source stays')
})

test('keeps the source when asked, and committing the same tree again is idempotent', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), sample)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const a = await store.commit(join(dir, 'src'), { keepSource: true })
  assert.ok(existsSync(join(dir, 'src', 'etc', 'app.conf')))
  const b = await store.commit(join(dir, 'src'), { keepSource: true })
  assert.equal(b.root.toString(), a.root.toString())
  assert.equal((await store.listLayers()).length, 1)
  assert.deepEqual(readdirSync(join(dir, 'data', 'staging')), [])
})

test('serves verified blocks and marks a layer corrupt when its bytes change', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), { 'f': bigText('corrupt', 20_000) })
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(join(dir, 'src'))
  const [entry] = await Array.fromAsync(store.entries(info.root))
  const chunk = entry!.chunks![0]!
  assert.equal((await store.getBlock(chunk.cid)).length, chunk.length)
  const fd = openSync(join(info.path, 'f'), 'r+')
  writeSync(fd, 'X', 10)
  closeSync(fd)
  await assert.rejects(store.getBlock(chunk.cid), { code: 'ERR_BLOCK_CORRUPT' })
  assert.equal(await store.has(info.root), false, 'a corrupt layer is no longer offered')
})

test('restores a layer asking the source only for blocks it lacks', async (t) => {
  const dir = tempDir(t)
  const shared = bigText('shared', 80_000)
  buildTree(join(dir, 'a'), { 'shared.bin': shared, 'only-a': bigText('a', 30_000) })
  buildTree(join(dir, 'b'), { 'copy-of-shared.bin': shared, 'only-b': bigText('b', 30_000), 'dir': { dir: { 'small': 'x' } } })
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const consumer = await openStore({ dataDir: join(dir, 'consumer') })
  t.after(() => consumer.close())
  await consumer.commit(join(dir, 'a'), { keepSource: true })
  const expected = describeTree(join(dir, 'b'))
  const b = await producer.commit(join(dir, 'b'))
  const asked: CID[] = []
  const source: BlockSource = { getBlock: async (cid, o) => { asked.push(cid); return await producer.getBlock(cid, o) } }
  const restored = await consumer.restore(b.root, source)
  assert.deepEqual(describeTree(restored.path), expected)
  const entries = await Array.fromAsync(producer.entries(b.root))
  const sharedChunks = new Set(entries.find((e) => e.path === 'copy-of-shared.bin')!.chunks!.map((c) => c.cid.toString()))
  const onlyB = entries.find((e) => e.path === 'only-b')!.chunks!.map((c) => c.cid.toString())
  const askedKeys = asked.map((c) => c.toString())
  for (const c of sharedChunks) assert.ok(!askedKeys.includes(c), 'a block the consumer had was fetched')
  for (const c of onlyB) assert.ok(askedKeys.includes(c), 'a missing block was not fetched')
  // The restored layer serves its blocks too.
  for (const c of onlyB) assert.ok(await consumer.hasBlock((entries.find((e) => e.path === 'only-b')!.chunks!.find((k) => k.cid.toString() === c))!.cid))
})

test('a failed restore leaves nothing behind', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'b'), { 'f': bigText('fail', 40_000), 'g': bigText('g', 40_000) })
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const consumer = await openStore({ dataDir: join(dir, 'consumer') })
  t.after(() => consumer.close())
  const b = await producer.commit(join(dir, 'b'))
  let served = 0
  const flaky: BlockSource = {
    getBlock: async (cid, o) => {
      if (++served > 4) throw new Error('peer went away')
      return await producer.getBlock(cid, o)
    }
  }
  await assert.rejects(consumer.restore(b.root, flaky), { code: 'ERR_COMMIT' })
  assert.equal(await consumer.has(b.root), false)
  assert.deepEqual(readdirSync(join(dir, 'consumer', 'staging')), [])
  assert.deepEqual(readdirSync(join(dir, 'consumer', 'layers')), [])
})

test('removes a layer and its block locations', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), sample)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  const info = await store.commit(join(dir, 'src'))
  const file = (await Array.fromAsync(store.entries(info.root))).find((e) => e.chunks !== undefined)
  await store.removeLayer(info.root)
  assert.equal(await store.has(info.root), false)
  assert.equal(existsSync(info.path), false)
  assert.equal(await store.hasBlock(file!.chunks![0]!.cid), false)
  await assert.rejects(store.getBlock(file!.chunks![0]!.cid), { code: 'ERR_BLOCK_NOT_FOUND' })
})

test('keeps records', async (t) => {
  const dir = tempDir(t)
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  assert.equal(await store.getRecord('k'), undefined)
  await store.putRecord('k', Uint8Array.of(1, 2, 3))
  assert.deepEqual([...(await store.getRecord('k'))!], [1, 2, 3])
})

test('refuses a store of another format version, clearly', async (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  const store = await openStore({ dataDir: data })
  await store.close()
  const db = new ClassicLevel<string, string>(join(data, 'index'))
  await db.put(K_VERSION, '999')
  await db.close()
  await assert.rejects(openStore({ dataDir: data }), { code: 'ERR_STORE_VERSION', message: /format version 999/ })
})

test('a second opener waits for the first, or fails at once when asked not to wait', async (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  const first = await openStore({ dataDir: data })
  await assert.rejects(openStore({ dataDir: data, wait: false }), { code: 'ERR_STORE_LOCKED' })
  let opened = false
  const second = openStore({ dataDir: data }).then((s) => { opened = true; return s })
  await sleep(300)
  assert.equal(opened, false, 'the second opener did not wait')
  await first.close()
  const s = await second
  assert.equal(opened, true)
  await s.close()
})

test('stays consistent when a commit is killed at random moments', async (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  const template = join(dir, 'template')
  const tree: Tree = {}
  for (let d = 0; d < 10; d++) {
    const files: Tree = {}
    for (let f = 0; f < 40; f++) files[`f${f}`] = `file ${d}/${f}\n`.repeat(1 + (f % 7) * 50)
    tree[`d${d}`] = { dir: files }
  }
  tree['big'] = bigText('crash', 100_000)
  buildTree(template, tree)
  const node = process.execPath
  const child = join(import.meta.dirname, 'fixtures', 'commit-child.ts')
  // Starts a commit and resolves once the store is open, so that kill times are
  // measured from the start of the commit itself, not from process start-up.
  const start = async (src: string): Promise<{ kill: () => void, exited: Promise<number | null> }> => {
    const p = spawn(node, [child, data, src], { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)))
    await new Promise<void>((resolve, reject) => {
      p.stdout.on('data', (b: Buffer) => { if (b.toString().includes('open')) resolve() })
      p.on('exit', () => reject(new Error('the commit child exited before opening the store')))
    })
    return { kill: () => p.kill('SIGKILL'), exited }
  }
  // One uninterrupted commit gives the time span to kill within.
  execFileSync('cp', ['-a', template, join(dir, 'src-timing')])
  const began = performance.now()
  const timing = await start(join(dir, 'src-timing'))
  assert.equal(await timing.exited, 0)
  const span = performance.now() - began
  rmSync(join(data, 'layers'), { recursive: true })
  const reset = await openStore({ dataDir: data })
  await reset.close()

  let completed = 0
  const kills = 8
  for (let i = 0; i < kills; i++) {
    const src = join(dir, `src${i}`)
    execFileSync('cp', ['-a', template, src]) // same times, so every commit is the same layer
    const p = await start(src)
    await sleep(Math.round((span * (i + 0.5)) / kills))
    p.kill()
    if ((await p.exited) === 0) completed++
    const store = await openStore({ dataDir: data })
    try {
      assert.deepEqual(readdirSync(join(data, 'staging')), [], 'staging was not cleaned')
      const layers = await store.listLayers()
      assert.ok(layers.length <= 1)
      assert.deepEqual(readdirSync(join(data, 'layers')).sort(), layers.map((l) => l.root.toString()).sort(), 'a layer dir exists without its index entry or the reverse')
      for (const l of layers) {
        const out = join(dir, `out${i}`)
        await store.unpack(l.root, out)
        assert.deepEqual(describeTree(out), describeTree(template))
        rmSync(out, { recursive: true })
        // Start the next round from an empty store, so each kill lands on a real commit.
        await store.removeLayer(l.root)
      }
    } finally {
      await store.close()
    }
  }
  t.diagnostic(`commit took ${span.toFixed(0)} ms; ${completed} of ${kills} commits finished before their kill`)
})

test('a restore refuses a block whose bytes are not its CID\'s, content or manifest, and keeps none of them', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'b'), { 'f': bigText('bad', 40_000), 'small': 'x' })
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const b = await producer.commit(join(dir, 'b'))
  for (const kind of ['content', 'manifest'] as const) {
    const consumer = await openStore({ dataDir: join(dir, `consumer-${kind}`) })
    t.after(() => consumer.close())
    let flipped = 0
    const lying: BlockSource = {
      getBlock: async (cid, o) => {
        const bytes = Uint8Array.from(await producer.getBlock(cid, o))
        const isManifest = cid.code === 0x71 && !cid.equals(b.root)
        if ((kind === 'manifest') === isManifest && (kind === 'manifest' || cid.code === 0x55)) {
          bytes[bytes.length - 1]! ^= 1
          flipped++
        }
        return bytes
      }
    }
    await assert.rejects(consumer.restore(b.root, lying), (err: Error) => {
      let e: unknown = err
      while (e instanceof Error && (e as { code?: string }).code !== 'ERR_BLOCK_MISMATCH') e = e.cause
      assert.ok(e instanceof Error, `${kind}: ${err.message}`)
      return true
    })
    assert.ok(flipped > 0, `no ${kind} block was served`)
    assert.equal(await consumer.has(b.root), false)
    assert.deepEqual(readdirSync(join(dir, `consumer-${kind}`, 'layers')), [])
  }
})

test('a layer restored under the peer policy keeps it when unpacked, and after a crash before its index', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'peer'), { 'suid': { file: 'x', mode: 0o4755, xattrs: { 'trusted.evil': '1', 'user.ok': '2' } } })
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const layer = await producer.commit(join(dir, 'peer'))
  const data = join(dir, 'consumer')
  let consumer = await openStore({ dataDir: data })
  await consumer.restore(layer.root, producer, { untrusted: true })
  const check = async (out: string): Promise<void> => {
    await consumer.unpack(layer.root, out)
    const d = describeTree(out) as Record<string, { mode: string, xattrs: string[] }>
    assert.equal(d['suid']!.mode, '100755')
    assert.deepEqual(d['suid']!.xattrs.map((x) => x.split('=')[0]), ['user.ok'])
  }
  await check(join(dir, 'out1'))
  await consumer.close()
  // A crash between the rename and the index write: the pending marker survives, the layer key does not.
  const db = new ClassicLevel<string, string>(join(data, 'index'))
  await db.del(LAYER.key(layer.root.toString()))
  await db.put(PENDING.key(layer.root.toString()), JSON.stringify({ untrusted: true }))
  await db.close()
  consumer = await openStore({ dataDir: data })
  t.after(() => consumer.close())
  assert.equal(await consumer.has(layer.root), true, 'the interrupted restore was indexed from its stored manifest')
  await check(join(dir, 'out2'))
})

test('a tree the format cannot carry is refused before it moves: the source stays', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  const deep = join(src, ...Array<string>(520).fill('d'))
  mkdirSync(deep, { recursive: true })
  writeFileSync(join(src, 'precious.txt'), 'keep me')
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(() => store.close())
  await assert.rejects(store.commit(src), { code: 'ERR_COMMIT', message: /cannot carry this path.*deeper than 512/ })
  assert.equal(readFileSync(join(src, 'precious.txt'), 'utf8'), 'keep me')
  assert.deepEqual(readdirSync(join(dir, 'data', 'layers')), [])
})

test('two restores of one layer at once give one layer dir that never changes under its users', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'b'), { 'f': bigText('same-root', 60_000) })
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(() => producer.close())
  const consumer = await openStore({ dataDir: join(dir, 'consumer') })
  t.after(() => consumer.close())
  const b = await producer.commit(join(dir, 'b'))
  const slow: BlockSource = { getBlock: async (cid, o) => { await sleep(20); return await producer.getBlock(cid, o) } }
  const later = consumer.restore(b.root, slow)
  const first = await consumer.restore(b.root, producer)
  const inode = statSync(first.path).ino
  const second = await later
  assert.equal(second.path, first.path)
  assert.equal(statSync(first.path).ino, inode, 'the second restore replaced the layer dir')
  assert.deepEqual(readdirSync(join(dir, 'consumer', 'layers')), [b.root.toString()])
})

test('a larger index write buffer writes a large manifest in fewer level-0 tables', async (t) => {
  const dir = tempDir(t)
  // ~10 MB of manifest: 2,800 files small enough to travel inside it, each its own.
  const files: Tree = {}
  for (let i = 0; i < 2800; i++) files[`f${i}.js`] = bigText(`file ${i}`, 100).slice(0, 3600)
  const flushes = async (name: string, init: { indexWriteBufferBytes?: number }): Promise<number> => {
    buildTree(join(dir, `src-${name}`), { pkg: { dir: files } })
    const store = await openStore({ dataDir: join(dir, name), ...init })
    try {
      await store.commit(join(dir, `src-${name}`))
    } finally {
      await store.close()
    }
    return (readFileSync(join(dir, name, 'index', 'LOG'), 'utf8').match(/Level-0 table/g) ?? []).length
  }
  const byDefault = await flushes('default', {})
  const larger = await flushes('larger', { indexWriteBufferBytes: 16 * 1024 * 1024 })
  assert.ok(byDefault >= 2, `LevelDB's 4 MiB buffer wrote ${byDefault} level-0 tables`)
  assert.equal(larger, 0)
  await assert.rejects(openStore({ dataDir: join(dir, 'bad'), indexWriteBufferBytes: 1000 }), /indexWriteBufferBytes must be an integer of at least 65536 bytes, got 1000/)
})

test('indexMemory says what the index holds in memory: it grows with what is written, and is 0 once closed', async (t) => {
  const store = await openStore({ dataDir: join(tempDir(t), 'data') })
  const before = store.indexMemory!()
  assert.ok(before > 0, `${before}`)
  // Records go to the index's memtable.
  for (let i = 0; i < 2000; i++) await store.putRecord(`r/test/${i}`, new Uint8Array(512).fill(i % 251))
  const after = store.indexMemory!()
  assert.ok(after >= before + 2000 * 512, `${before} -> ${after}`)
  await store.close()
  assert.equal(store.indexMemory!(), 0)
})

test('a store opened with indexFlushEveryMs writes its memtable out on that timer: what the index holds in memory falls back, and nothing written is lost', async (t) => {
  const dataDir = join(tempDir(t), 'data')
  const store = await openStore({ dataDir, indexWriteBufferBytes: 16 * 1024 * 1024, indexFlushEveryMs: 200 })
  const before = store.indexMemory!()
  for (let i = 0; i < 2000; i++) await store.putRecord(`r/test/${i}`, new Uint8Array(512).fill(i % 251))
  // ~1 MB, far below the write buffer's 16 MiB: LevelDB alone would keep all of it in memory (the test above).
  const deadline = Date.now() + 10_000
  while (store.indexMemory!() > before + 100_000 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  assert.ok(store.indexMemory!() <= before + 100_000, `still ${store.indexMemory!()} bytes in memory (${before} before the writes)`)
  for (const i of [0, 777, 1999]) assert.deepEqual(new Uint8Array(await store.getRecord(`r/test/${i}`) ?? []), new Uint8Array(512).fill(i % 251))
  await store.close()
  const again = await openStore({ dataDir })
  t.after(async () => { await again.close() })
  assert.deepEqual(new Uint8Array(await again.getRecord('r/test/1234') ?? []), new Uint8Array(512).fill(1234 % 251))
})

test('indexFlushEveryMs must be a positive number', async (t) => {
  const dir = tempDir(t)
  await assert.rejects(openStore({ dataDir: join(dir, 'bad'), indexFlushEveryMs: 0 }), /indexFlushEveryMs must be a positive number of milliseconds, got 0/)
})
