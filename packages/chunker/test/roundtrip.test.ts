import { test } from 'node:test'
import assert from 'node:assert/strict'
import { openSync, readSync, readdirSync, closeSync, lstatSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import type { CID } from 'multiformats/cid'
import { mknod, S_IFCHR } from '@strata/sys'
import { createServer } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { packTree, materialize, verifyBlock, readManifest, MAX_BLOCK_SIZE } from '../src/index.ts'
import type { ContentSource, PackOptions } from '../src/index.ts'

/** Packs `dir` and returns its root with a source serving every block from memory, verified. */
export async function packToMemory (dir: string, opts: PackOptions = {}): Promise<{ root: CID, source: ContentSource, blocks: Map<string, Uint8Array> }> {
  const locations: Array<{ cid: string, path: string, offset: number, length: number }> = []
  const result = await packTree(dir, { ...opts, onBlock: (l) => locations.push(l) })
  const blocks = new Map<string, Uint8Array>()
  for (const b of result.blocks) blocks.set(b.cid.toString(), b.bytes)
  for (const l of locations) {
    const fd = openSync(join(dir, l.path), 'r')
    const buf = new Uint8Array(l.length)
    readSync(fd, buf, 0, l.length, l.offset)
    closeSync(fd)
    blocks.set(l.cid, buf)
  }
  const source: ContentSource = {
    async getBlock (cid) {
      const bytes = blocks.get(cid.toString())
      if (bytes === undefined) throw new Error(`no block ${cid.toString()}`)
      verifyBlock(cid, bytes)
      return bytes
    }
  }
  return { root: result.root, source, blocks }
}

const big = createHash('sha256').update('big').digest().toString('hex').repeat(30_000) // ~1.9 MB, several chunks

const everyType: Tree = {
  'empty': '',
  'small.txt': 'hello\n',
  'big.bin': big,
  'bin': { dir: {
    'tool': { file: '#!/bin/sh\necho hi\n', mode: 0o4755 },
    'group-tool': { file: 'x', mode: 0o2711, uid: 1234, gid: 5678 },
    'link-to-tool': { symlink: 'tool' },
    'dangling': { symlink: '../nowhere/at/all' },
    'absolute': { symlink: '/etc/passwd' }
  } },
  'shared': { dir: { 'tmp': { dir: { 'f': 'x' }, mode: 0o1777 } } },
  'hard-a': 'linked content',
  'hard-b': { hardlink: 'hard-a' },
  'deleted-file': { whiteout: true },
  'replaced-dir': { dir: { 'new': 'new content' }, opaque: true },
  'attrs': { file: 'x', xattrs: { 'user.mime': 'text/plain', 'user.empty': '' }, mtime: [1_700_000_000, 123_456_789] },
  'pipe': { fifo: true },
  'sparse': { sparse: 10 * 1024 * 1024, data: [[0, 'head'], [5 * 1024 * 1024, 'middle'], [10 * 1024 * 1024 - 4, 'tail']] },
  'old-dir': { dir: { 'x': 'y' }, mtime: [1_000_000_000, 5], mode: 0o750, xattrs: { 'user.d': '1' } },
  'ünïcødé 名前 🎉': 'unicode name',
  'a-b': 'sorts before a/b in bytes',
  'a': { dir: { 'b': 'component order' } }
}

test('restores every entry type exactly', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, everyType)
  mknod(join(src, 'devnull'), S_IFCHR | 0o666, 1, 3)
  // Normalized, as a commit does: the setuid and setgid bits go from the tree as from the manifest.
  const { root, source } = await packToMemory(src, { inlineMax: 1024, normalize: true })
  assert.equal(lstatSync(join(src, 'bin/tool')).mode & 0o7777, 0o755)
  const out = join(dir, 'out')
  const result = await materialize(root, out, source)
  assert.equal(result.entries, Object.keys(describeTree(src)).length - 1)
  assert.deepEqual(describeTree(out), describeTree(src))
  // The restored tree packs to the same layer.
  assert.equal((await packToMemory(out, { inlineMax: 1024 })).root.toString(), root.toString())
  // Holes are filled on restore: the content is equal, the file is dense.
  assert.equal(statSync(join(out, 'sparse')).size, 10 * 1024 * 1024)
})

test('small files travel inside the manifest up to the layer\'s inline budget, then as blocks', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  const files: Tree = {}
  for (let i = 0; i < 10; i++) files[`f${i}`] = String(i).repeat(1000)
  files['large'] = 'y'.repeat(5000) // over inlineMax: a block whatever the budget
  buildTree(src, files)
  const inlinedPaths = async (opts: PackOptions): Promise<{ inline: string[], blocks: string[] }> => {
    const { root, source, blocks } = await packToMemory(src, opts)
    const inline: string[] = []
    for await (const e of readManifest(root, source.getBlock.bind(source))) if (e.data !== undefined) inline.push(e.path)
    const out = join(dir, `out-${inline.length}`)
    await materialize(root, out, source)
    assert.deepEqual(describeTree(out), describeTree(src))
    return { inline, blocks: [...blocks.keys()] }
  }
  const all = await inlinedPaths({ inlineMax: 4096 })
  assert.deepEqual(all.inline, Array.from({ length: 10 }, (_, i) => `f${i}`))
  // 3500 bytes of budget: the first three files in manifest order, the rest become blocks.
  const some = await inlinedPaths({ inlineMax: 4096, inlineBudget: 3500 })
  assert.deepEqual(some.inline, ['f0', 'f1', 'f2'])
  assert.equal(some.blocks.length - all.blocks.length, 7)
})

test('packing the same tree twice gives the same root CID; any change gives another', async (t) => {
  const dir = tempDir(t)
  buildTree(join(dir, 'a'), everyType)
  const first = (await packTree(join(dir, 'a'))).root.toString()
  assert.equal((await packTree(join(dir, 'a'))).root.toString(), first)
  buildTree(join(dir, 'a'), { 'small.txt': 'hello!\n' })
  assert.notEqual((await packTree(join(dir, 'a'))).root.toString(), first)
})

test('the peer policy strips setuid/setgid and foreign xattrs and refuses devices', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, {
    'suid': { file: 'x', mode: 0o6755, xattrs: { 'user.ok': 'kept', 'trusted.evil': 'dropped' } },
    'wh': { whiteout: true }
  })
  const { root, source } = await packToMemory(src)
  const out = join(dir, 'out')
  await materialize(root, out, source, { untrusted: true })
  const desc = describeTree(out) as Record<string, { mode: string, xattrs: string[] }>
  assert.equal(desc['suid']!.mode, '100755')
  assert.deepEqual(desc['suid']!.xattrs, [`user.ok=${Buffer.from('kept').toString('hex')}`])
  assert.ok(lstatSync(join(out, 'wh')).isCharacterDevice())

  mknod(join(src, 'sda'), 0o060000 | 0o600, 8, 0)
  const withDevice = await packToMemory(src)
  const out2 = join(dir, 'out2')
  await assert.rejects(materialize(withDevice.root, out2, withDevice.source, { untrusted: true }), { code: 'ERR_POLICY', path: 'sda' })
  assert.throws(() => lstatSync(out2), { code: 'ENOENT' })
})

test('refuses a tree with a non-UTF-8 name, naming it', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { 'ok': 'x' })
  const bad = Buffer.concat([Buffer.from(src + '/bad-'), Buffer.from([0xff, 0xfe])])
  closeSync(openSync(bad, 'w'))
  await assert.rejects(packTree(src), { code: 'ERR_UNSUPPORTED_ENTRY', message: /not valid UTF-8.*bad-/ })
})

test('skips sockets with a warning, like tar', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { 'kept': 'x' })
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(join(src, 'app.sock'), resolve))
  t.after(() => server.close())
  const warnings: string[] = []
  const packed = await packTree(src, { onWarning: (w) => warnings.push(w.path) })
  assert.deepEqual(warnings, ['app.sock'])
  assert.equal(packed.count, 1)
})

test('splits a large manifest into entry blocks under the block limit, and reads it back', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  const tree: Tree = {}
  for (let d = 0; d < 10; d++) {
    const files: Tree = {}
    for (let f = 0; f < 250; f++) files[`${'long-name-'.repeat(8)}${f}`] = { symlink: `${'../target/'.repeat(30)}${f}` }
    tree[`dir-${d}`] = { dir: files }
  }
  buildTree(src, tree)
  const packed = await packTree(src)
  assert.equal(packed.count, 10 * 251)
  assert.ok(packed.blocks.length > 3, `only ${packed.blocks.length} blocks`)
  for (const b of packed.blocks) assert.ok(b.bytes.length <= MAX_BLOCK_SIZE, `a block of ${b.bytes.length} bytes`)
  const blocks = new Map(packed.blocks.map((b) => [b.cid.toString(), b.bytes]))
  let n = 0
  for await (const e of readManifest(packed.root, async (cid) => blocks.get(cid.toString())!)) {
    if (e.type === 'symlink') assert.match(e.target!, /^(\.\.\/target\/){30}\d+$/)
    n++
  }
  assert.equal(n, packed.count)
  // Changing one entry changes only the entry block holding it (and the root).
  writeFileSync(join(src, 'dir-5', 'extra'), 'x')
  const again = await packTree(src)
  const before = new Set(packed.blocks.map((b) => b.cid.toString()))
  const changed = again.blocks.filter((b) => !before.has(b.cid.toString())).length
  assert.ok(changed <= 3, `${changed} of ${again.blocks.length} blocks changed`)
})

test('the blocks of the next window are asked for before the current window is written', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  // Three files of distinct content, 33 KB each: with a budget of 100 KB, a window
  // (a quarter of it) holds one file, and the budget three.
  buildTree(src, { a: 'first file\n'.repeat(3000), b: 'second file\n'.repeat(3000), c: 'third file\n'.repeat(3000) })
  const { root, source } = await packToMemory(src)
  const fileOf = new Map<string, string>()
  await packTree(src, { onBlock: (l) => fileOf.set(l.cid, l.path) })
  // The block of window 1 is held back until a block of window 2 is asked for.
  // Without a lookahead nothing asks for it, and only the fallback releases it.
  let releasedBy: 'lookahead' | 'fallback' | undefined
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  const fallback = setTimeout(() => { releasedBy ??= 'fallback'; release() }, 10_000)
  t.after(() => clearTimeout(fallback))
  const slow: ContentSource = {
    async getBlock (cid, o) {
      const file = fileOf.get(cid.toString())
      if (file === 'b') {
        releasedBy ??= 'lookahead'
        release()
      }
      if (file === 'a') await held
      return await source.getBlock(cid, o)
    }
  }
  await materialize(root, join(dir, 'out'), slow, { prefetchBytes: 100_000 })
  assert.equal(releasedBy, 'lookahead')
  assert.deepEqual(describeTree(join(dir, 'out')), describeTree(src))
})

test('an abort while blocks are read ahead leaves no block fetch running once materialize has returned', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { a: 'a file\n'.repeat(3000), b: 'b file\n'.repeat(3000), c: 'c file\n'.repeat(3000), d: 'd file\n'.repeat(3000) })
  const { root, source } = await packToMemory(src)
  const fileOf = new Map<string, string>()
  await packTree(src, { onBlock: (l) => fileOf.set(l.cid, l.path) })
  const controller = new AbortController()
  let running = 0
  let most = 0
  const slow: ContentSource = {
    async getBlock (cid, o) {
      const file = fileOf.get(cid.toString())
      if (file === undefined) return await source.getBlock(cid, o)
      running++
      most = Math.max(most, running)
      try {
        await delay(30)
        // The first file's block lands, then the restore is aborted: the reader is
        // then between its wait for room and the next window's fetch.
        if (file === 'a') controller.abort()
        return await source.getBlock(cid, o)
      } finally {
        running--
      }
    }
  }
  await assert.rejects(materialize(root, join(dir, 'out'), slow, { prefetchBytes: 1, windowsAhead: 1, signal: controller.signal }), (err: Error) => err.name === 'AbortError')
  assert.equal(running, 0, 'a block fetch outlived materialize')
  assert.ok(most >= 1)
})

test('the blocks a materialization holds stay within its byte budget until the files holding them are written', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  // Files of one 20 KiB chunk each: each is its own block, none inline.
  const files: Record<string, string> = {}
  for (let i = 0; i < 120; i++) files[`f${String(i).padStart(3, '0')}`] = createHash('sha256').update(`file ${i}`).digest('hex').repeat(640)
  buildTree(src, files)
  const { root, source } = await packToMemory(src)
  const out = join(dir, 'out')
  const size = 64 * 640
  const budget = 8 * size
  let asked = 0
  let most = 0
  const counting: ContentSource = {
    async getBlock (cid, o) {
      const bytes = await source.getBlock(cid, o)
      if (cid.code !== 0x55) return bytes
      asked += bytes.length
      // A file counts as written once it has its whole size: held = asked - written.
      let written = 0
      for (const name of readdirSync(out)) if (statSync(join(out, name)).size === size) written += size
      most = Math.max(most, asked - written)
      return bytes
    }
  }
  await materialize(root, out, counting, { prefetchBytes: budget })
  assert.deepEqual(describeTree(out), describeTree(src))
  // The budget, and one window the reader may add while the queue is empty.
  assert.ok(most <= budget + budget / 4 + size, `held ${most} bytes of blocks with a budget of ${budget}`)
})
