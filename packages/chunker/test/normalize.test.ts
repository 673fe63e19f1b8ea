import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, linkSync, lstatSync, openSync, readSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { lgetxattrs, lsetxattr, lutimens } from '@strata/sys'
import type { CID } from 'multiformats/cid'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import { materialize, packTree, readManifest, verifyBlock } from '../src/index.ts'
import type { ContentSource, Drop, PackOptions } from '../src/index.ts'

/** Packs `dir`; the source serves the manifest from memory and content from the tree as it is after the pack. */
async function pack (dir: string, opts: PackOptions = {}): Promise<{ root: CID, source: ContentSource }> {
  const where = new Map<string, { path: string, offset: number, length: number }>()
  const packed = await packTree(dir, { ...opts, onBlock: (b) => where.set(b.cid, b) })
  const manifest = new Map(packed.blocks.map((b) => [b.cid.toString(), b.bytes]))
  const source: ContentSource = {
    async getBlock (cid) {
      let bytes = manifest.get(cid.toString())
      if (bytes === undefined) {
        const at = where.get(cid.toString())!
        bytes = new Uint8Array(at.length)
        const fd = openSync(join(dir, at.path), 'r')
        readSync(fd, bytes, 0, at.length, at.offset)
        closeSync(fd)
      }
      verifyBlock(cid, bytes)
      return bytes
    }
  }
  return { root: packed.root, source }
}

async function manifestLines (root: CID, source: ContentSource): Promise<string[]> {
  const out: string[] = []
  for await (const e of readManifest(root, source.getBlock.bind(source))) {
    out.push(`${e.path} ${e.type} ${e.mode.toString(8)}${e.opaque === true ? ' opaque' : ''} ${(e.xattrs ?? []).map(([n]) => n).join(',')}`)
  }
  return out
}

/** Leaves a socket file at `path` (bound, then the server closed without unlinking it). */
async function socketAt (path: string): Promise<void> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(`${path}.bound`, resolve))
  linkSync(`${path}.bound`, path)
  await new Promise<void>((resolve) => server.close(() => { resolve() }))
}

async function messyTree (src: string): Promise<void> {
  buildTree(src, {
    'suid': { file: 'x', mode: 0o4755 },
    'sgid-dir': { dir: { 'f': 'in it' }, mode: 0o2775, mtime: [1_600_000_000, 7] },
    'caps': { file: 'y', xattrs: { 'security.capability.test': '1', 'trusted.t': '2', 'user.ok': 'kept' }, mtime: [1_600_000_001, 8] },
    'hard-a': { file: 'shared', xattrs: { 'trusted.t': 'x' } },
    'hard-b': { hardlink: 'hard-a' },
    'doc': { dir: { 'a': 'a', 'b': { dir: { 'c': 'c' } } }, xattrs: { 'user.overlay.opaque': 'y', 'user.keep': 'k' }, mtime: [1_500_000_000, 1] },
    'gone': { dir: { 'new': 'n' }, opaque: true },
    'run': { dir: {} }
  })
  symlinkSync('suid', join(src, 'sym'))
  linkSync(join(src, 'sym'), join(src, 'sym-too'))
  lsetxattr(src, 'trusted.root', Buffer.from('r'))
  await socketAt(join(src, 'run/app.sock'))
  lutimens(join(src, 'run'), [1_400_000_000, 2], [1_400_000_000, 2])
}

test('a normalized tree holds exactly what its manifest records, and materializes back the same', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  await messyTree(src)
  const drops: Drop[] = []
  const warnings: string[] = []
  const { root, source } = await pack(src, { normalize: true, onDrop: (d) => drops.push(d), onWarning: (w) => warnings.push(w.path) })
  assert.deepEqual(warnings, [], 'a normalized tree has nothing left to warn about')
  assert.deepEqual(drops.map((d) => `${d.what} ${d.path}${d.name !== undefined ? ` ${d.name}` : ''}`).sort(), [
    'link sym-too',
    'setuid sgid-dir',
    'setuid suid',
    'socket run/app.sock',
    'xattr  trusted.root',
    'xattr caps security.capability.test',
    'xattr caps trusted.t',
    'xattr doc user.overlay.opaque',
    'xattr hard-a trusted.t'
  ].sort())

  // The tree itself: nothing the manifest leaves out is left, and what it keeps is intact.
  assert.equal(lstatSync(join(src, 'suid')).mode & 0o7777, 0o755)
  assert.equal(lstatSync(join(src, 'sgid-dir')).mode & 0o7777, 0o775)
  assert.deepEqual(lgetxattrs(join(src, 'caps')).map(([n]) => n), ['user.ok'])
  assert.equal(lstatSync(join(src, 'caps'), { bigint: true }).mtimeNs, 1_600_000_001_000_000_008n)
  assert.equal(lstatSync(join(src, 'hard-a')).ino, lstatSync(join(src, 'hard-b')).ino, 'a hardlinked file stays one inode')
  assert.deepEqual(lgetxattrs(join(src, 'hard-b')), [])
  assert.notEqual(lstatSync(join(src, 'sym')).ino, lstatSync(join(src, 'sym-too')).ino)
  assert.deepEqual(lgetxattrs(join(src, 'doc')).map(([n]) => n), ['user.keep'])
  assert.equal(lstatSync(join(src, 'doc/b/c')).isFile(), true, 'a recreated dir keeps its contents')
  assert.equal(lstatSync(join(src, 'doc'), { bigint: true }).mtimeNs, 1_500_000_000_000_000_001n)
  assert.equal(lstatSync(join(src, 'run'), { bigint: true }).mtimeNs, 1_400_000_000_000_000_002n, 'removing the socket left its dir\'s mtime alone')
  assert.deepEqual(lgetxattrs(join(src, 'gone')).map(([n]) => n), ['trusted.overlay.opaque'])
  assert.deepEqual(lgetxattrs(src), [])

  // Packed again, it is the same layer with nothing to drop; materialized, the same tree.
  const again: Drop[] = []
  assert.equal((await packTree(src, { onDrop: (d) => again.push(d) })).root.toString(), root.toString())
  assert.deepEqual(again, [])
  const out = join(dir, 'out')
  await materialize(root, out, source, { untrusted: true })
  assert.deepEqual(describeTree(out), describeTree(src))
  const opaque = (await manifestLines(root, source)).filter((l) => l.includes(' opaque'))
  assert.deepEqual(opaque.map((l) => l.split(' ')[0]), ['gone'], 'only the trusted.overlay.opaque the mount honours makes a dir opaque')
})

test('without normalize the tree is only read: what the manifest leaves out comes as warnings', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  await messyTree(src)
  const before = describeTree(src)
  const warnings: string[] = []
  const packed = await pack(src, { onWarning: (w) => warnings.push(w.path) })
  assert.deepEqual(describeTree(src), before)
  assert.ok(warnings.includes('run/app.sock') && warnings.includes('suid') && warnings.includes('caps'), warnings.join(', '))
  // The manifest is the one a normalized copy of the tree gives.
  const copy = join(dir, 'copy')
  await messyTree(copy)
  const normalized = await pack(copy, { normalize: true })
  assert.deepEqual(await manifestLines(packed.root, packed.source), await manifestLines(normalized.root, normalized.source))
})

test('overlay bookkeeping a lower dir ignores stays in place and out of the manifest', async (t) => {
  const dir = tempDir(t)
  const src = join(dir, 'src')
  buildTree(src, { 'd': { dir: { 'f': 'x' } } })
  lsetxattr(join(src, 'd'), 'trusted.overlay.origin', Buffer.from([0, 1, 2]))
  lsetxattr(src, 'trusted.overlay.impure', Buffer.from('y'))
  const drops: Drop[] = []
  const { root, source } = await pack(src, { normalize: true, onDrop: (d) => drops.push(d) })
  assert.deepEqual(drops, [])
  assert.deepEqual(lgetxattrs(join(src, 'd')).map(([n]) => n), ['trusted.overlay.origin'])
  assert.deepEqual(await manifestLines(root, source), ['d dir 755 ', 'd/f file 644 '])
})
