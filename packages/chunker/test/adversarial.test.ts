import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as dagCbor from '@ipld/dag-cbor'
import type { CID } from 'multiformats/cid'
import { tempDir } from '@strata/testing'
import { cidOf, DAG_CBOR, materialize, RAW } from '../src/index.ts'
import type { ContentSource } from '../src/index.ts'

type Raw = Record<string, unknown>

const T = { file: 0, dir: 1, symlink: 2, hardlink: 3, whiteout: 4, fifo: 5, chardev: 6, blockdev: 7 }
const attrs = { m: 0o644, u: 0, g: 0, mt: [1_700_000_000, 0] }
const dir = (p: string): Raw => ({ p, t: T.dir, ...attrs, m: 0o755 })
const file = (p: string, data = 'x'): Raw => {
  const d = new TextEncoder().encode(data)
  return { p, t: T.file, ...attrs, s: d.length, d }
}

/** Encodes entries as a manifest exactly as given (no checks), with optional root overrides. */
const noTime = (e: Raw): Raw => {
  const { mt: _, ...rest } = e
  return rest
}

/** With `times` (one per list), a version 2 manifest linking them; else version 1. */
function craft (lists: Raw[][], root: Raw = {}, times?: Raw[]): { root: CID, source: ContentSource, put: (bytes: Uint8Array) => CID } {
  const blocks = new Map<string, Uint8Array>()
  const put = (bytes: Uint8Array, codec: number = DAG_CBOR): CID => {
    const cid = cidOf(codec, bytes)
    blocks.set(cid.toString(), bytes)
    return cid
  }
  const listCids = lists.map((entries) => put(dagCbor.encode({ entries })))
  const count = lists.reduce((n, l) => n + l.length, 0)
  const size = lists.flat().reduce((n, e) => n + (e.t === T.file && typeof e.s === 'number' && e.s < 2 ** 40 ? e.s : 0), 0)
  const v2 = times === undefined ? {} : { version: 2, times: times.map((t) => put(dagCbor.encode(t))) }
  const rootCid = put(dagCbor.encode({ format: 'strata/layer', version: 1, count, size, root: { m: 0o755, u: 0, g: 0, mt: [0, 0] }, entries: listCids, ...v2, ...root }))
  return {
    root: rootCid,
    put: (bytes) => put(bytes, RAW),
    source: {
      async getBlock (cid) {
        const b = blocks.get(cid.toString())
        if (b === undefined) throw new Error(`missing ${cid.toString()}`)
        return b
      }
    }
  }
}

/** A sandbox with canary files beside the target; checks they are untouched afterwards. */
function sandbox (t: { after: (fn: () => void) => void }): { target: string, check: () => void, base: string } {
  const base = tempDir(t)
  const canary = join(base, 'canary')
  writeFileSync(canary, 'do not touch')
  writeFileSync(join(base, 'passwd'), 'root:x:0:0')
  const before = lstatSync(canary, { bigint: true }).mtimeNs
  const listing = readdirSync(base).sort()
  return {
    base,
    target: join(base, 'target'),
    check: () => {
      assert.equal(readFileSync(canary, 'utf8'), 'do not touch')
      assert.equal(lstatSync(canary, { bigint: true }).mtimeNs, before)
      assert.equal(readFileSync(join(base, 'passwd'), 'utf8'), 'root:x:0:0')
      assert.deepEqual(readdirSync(base).sort(), listing, 'something was left beside the target')
    }
  }
}

const FAKE = cidOf(RAW, new Uint8Array([1]))

const cases: Array<{ name: string, lists: Raw[][], root?: Raw, times?: Raw[], code: string, message: RegExp }> = [
  { name: 'a .. component', lists: [[dir('a'), file('a/../../canary')]], code: 'ERR_INVALID_MANIFEST', message: /'\.\.' component/ },
  { name: 'a bare .. path', lists: [[file('..')]], code: 'ERR_INVALID_MANIFEST', message: /'\.\.' component/ },
  { name: 'an absolute path', lists: [[file('/tmp/strata-evil')]], code: 'ERR_INVALID_MANIFEST', message: /absolute/ },
  { name: 'an empty path', lists: [[file('')]], code: 'ERR_INVALID_MANIFEST', message: /empty/ },
  { name: 'an empty component', lists: [[dir('a'), file('a//b')]], code: 'ERR_INVALID_MANIFEST', message: /empty component/ },
  { name: 'a NUL byte', lists: [[file('a\0b')]], code: 'ERR_INVALID_MANIFEST', message: /NUL/ },
  { name: 'a . component', lists: [[dir('a'), file('a/./b')]], code: 'ERR_INVALID_MANIFEST', message: /'\.' component/ },
  { name: 'a write through a symlink', lists: [[{ p: 'link', t: T.symlink, ...attrs, l: '..' }, file('link/canary')]], code: 'ERR_INVALID_MANIFEST', message: /parent is not a directory/ },
  { name: 'a write through an absolute symlink', lists: [[{ p: 'etc', t: T.symlink, ...attrs, l: '/etc' }, file('etc/passwd')]], code: 'ERR_INVALID_MANIFEST', message: /parent is not a directory/ },
  { name: 'a file under a missing directory', lists: [[file('nodir/f')]], code: 'ERR_INVALID_MANIFEST', message: /parent is not a directory/ },
  { name: 'a hardlink outside', lists: [[{ p: 'h', t: T.hardlink, ...attrs, l: '../canary' }]], code: 'ERR_INVALID_MANIFEST', message: /'\.\.' component/ },
  { name: 'a hardlink to an absolute path', lists: [[{ p: 'h', t: T.hardlink, ...attrs, l: '/etc/passwd' }]], code: 'ERR_INVALID_MANIFEST', message: /absolute/ },
  { name: 'a hardlink to a symlink', lists: [[{ p: 'a', t: T.symlink, ...attrs, l: '/etc/passwd' }, { p: 'b', t: T.hardlink, ...attrs, l: 'a' }]], code: 'ERR_INVALID_MANIFEST', message: /earlier regular file/ },
  { name: 'a hardlink to a later file', lists: [[{ p: 'a', t: T.hardlink, ...attrs, l: 'b' }, file('b')]], code: 'ERR_INVALID_MANIFEST', message: /earlier regular file/ },
  { name: 'duplicate paths', lists: [[file('a'), file('a')]], code: 'ERR_INVALID_MANIFEST', message: /duplicate/ },
  { name: 'a duplicate across blocks', lists: [[file('a')], [file('a')]], code: 'ERR_INVALID_MANIFEST', message: /duplicate/ },
  { name: 'a directory replaced by a symlink of the same name', lists: [[dir('d'), { p: 'd', t: T.symlink, ...attrs, l: '/' }, file('d/x')]], code: 'ERR_INVALID_MANIFEST', message: /duplicate/ },
  { name: 'entries out of order', lists: [[file('b'), file('a')]], code: 'ERR_INVALID_MANIFEST', message: /out of order/ },
  { name: 'an absurd file size', lists: [[{ p: 'f', t: T.file, ...attrs, s: 2 ** 60 }]], code: 'ERR_INVALID_MANIFEST', message: /size must be an integer/ },
  { name: 'chunks that do not add up', lists: [[{ p: 'f', t: T.file, ...attrs, s: 10, d: new Uint8Array(9) }]], code: 'ERR_INVALID_MANIFEST', message: /inline data length/ },
  { name: 'an absurd entry count', lists: [[file('a')]], root: { count: 1e12 }, code: 'ERR_INVALID_MANIFEST', message: /count must be/ },
  { name: 'more entries than declared', lists: [[file('a'), file('b')]], root: { count: 1 }, code: 'ERR_INVALID_MANIFEST', message: /more entries/ },
  { name: 'fewer entries than declared', lists: [[file('a')]], root: { count: 2 }, code: 'ERR_INVALID_MANIFEST', message: /declares 2 entries/ },
  { name: '100k-deep nesting', lists: [[file(Array(100_000).fill('a').join('/'))]], code: 'ERR_INVALID_MANIFEST', message: /longer than 4096|deeper than/ },
  { name: 'an unknown field', lists: [[{ ...file('a'), evil: 1 }]], code: 'ERR_INVALID_MANIFEST', message: /unexpected field "evil"/ },
  { name: 'a symlink target with NUL', lists: [[{ p: 'l', t: T.symlink, ...attrs, l: 'a\0b' }]], code: 'ERR_INVALID_MANIFEST', message: /symlink target/ },
  { name: 'a mode with file type bits', lists: [[{ ...file('a'), m: 0o100644 }]], code: 'ERR_INVALID_MANIFEST', message: /mode must be/ },
  { name: 'another format version', lists: [[file('a')]], root: { version: 3 }, code: 'ERR_INVALID_MANIFEST', message: /unsupported manifest version 3/ },
  { name: 'times blocks in a version 1 root', lists: [[file('a')]], times: [{ mt: [1, 0] }], root: { version: 1 }, code: 'ERR_INVALID_MANIFEST', message: /version 1 manifest has no times/ },
  { name: 'a version 2 root without times', lists: [[noTime(file('a'))]], root: { version: 2 }, code: 'ERR_INVALID_MANIFEST', message: /one block per entry-list block/ },
  { name: 'an mtime inside a version 2 entry', lists: [[file('a')]], times: [{ mt: [1, 0] }], code: 'ERR_INVALID_MANIFEST', message: /carries its mtime in the times block/ },
  { name: 'a times block shorter than its list', lists: [[noTime(file('a')), noTime(file('b'))]], times: [{ mt: [1, 0] }], code: 'ERR_INVALID_MANIFEST', message: /holds 1 times for 2 entries/ },
  { name: 'nanoseconds past a second in a times block', lists: [[noTime(file('a'))]], times: [{ mt: [1, 1e9] }], code: 'ERR_INVALID_MANIFEST', message: /nanoseconds/ },
  { name: 'an unknown field in a times block', lists: [[noTime(file('a'))]], times: [{ mt: [1, 0], x: 1 }], code: 'ERR_INVALID_MANIFEST', message: /unexpected field "x" in a times block/ },
  { name: 'a root size that is not the sum of the files', lists: [[file('a'), file('b')]], root: { size: 1 }, code: 'ERR_INVALID_MANIFEST', message: /add up to more than the 1 bytes/ },
  { name: 'an unknown field in the root', lists: [[file('a')]], root: { extra: true }, code: 'ERR_INVALID_MANIFEST', message: /unexpected field "extra" in the manifest root/ },
  { name: 'an overlay xattr', lists: [[{ ...file('a'), x: [['trusted.overlay.redirect', new Uint8Array([1])]] }]], code: 'ERR_INVALID_MANIFEST', message: /belongs to the overlay/ },
  { name: 'a 600-byte name', lists: [[file('\u20ac'.repeat(200))]], code: 'ERR_INVALID_MANIFEST', message: /longer than 255 bytes/ },
  { name: 'a tiny chunk before the last', lists: [[{ p: 'f', t: T.file, ...attrs, s: 20, c: [[FAKE, 10], [FAKE, 10]] }]], code: 'ERR_INVALID_MANIFEST', message: /chunks must be|shorter than/ },
  { name: 'an oversized chunk', lists: [[{ p: 'f', t: T.file, ...attrs, s: 300_000, c: [[FAKE, 300_000]] }]], code: 'ERR_INVALID_MANIFEST', message: /chunk length must be/ },
  { name: 'an unknown type', lists: [[{ ...file('a'), t: 42 }]], code: 'ERR_INVALID_MANIFEST', message: /type must be/ }
]

for (const c of cases) {
  test(`refuses a manifest with ${c.name}, touching nothing outside the target`, async (t) => {
    const box = sandbox(t)
    const { root, source } = craft(c.lists, c.root, c.times)
    await assert.rejects(materialize(root, box.target, source), (err: Error & { code?: string }) => {
      assert.equal(err.code, c.code, `${err.name}: ${err.message}`)
      assert.match(err.message, c.message)
      return true
    })
    assert.equal(existsSync(box.target), false, 'the partial output was not removed')
    box.check()
  })
}

test('removes the partial output when a block is wrong, and keeps a given empty target', async (t) => {
  const box = sandbox(t)
  const built = craft([[]])
  const good = new Uint8Array(100_000).fill(7)
  const cid = built.put(good)
  const { root, source } = craft([[dir('d'), { p: 'd/f', t: T.file, ...attrs, s: 99_999, c: [[cid, 99_999]] }, file('last')]])
  const withBlock: ContentSource = { getBlock: async (c) => (c.equals(cid) ? good : await source.getBlock(c)) }
  mkdirSync(box.target)
  await assert.rejects(materialize(root, box.target, withBlock), { code: 'ERR_BLOCK_MISMATCH', path: 'd/f' })
  assert.deepEqual(readdirSync(box.target), [])
  rmdirSync(box.target)
  box.check()
})

test('refuses a root that is not a manifest', async (t) => {
  const box = sandbox(t)
  const built = craft([[]])
  const notCbor = built.put(new TextEncoder().encode('not cbor at all'))
  const { source } = built
  const src: ContentSource = { getBlock: async (c) => (c.equals(notCbor) ? new TextEncoder().encode('not cbor at all') : await source.getBlock(c)) }
  await assert.rejects(materialize(notCbor, box.target, src), { code: 'ERR_INVALID_MANIFEST' })
  box.check()
})

test('writes names differing only by case or Unicode normalization as distinct files', async (t) => {
  const box = sandbox(t)
  const names = ['A', 'a', 'caf\u00e9', 'cafe\u0301'].sort()
  const { root, source } = craft([names.map((n) => file(n, n))])
  await materialize(root, box.target, source)
  for (const n of names) assert.equal(readFileSync(join(box.target, n), 'utf8'), n)
})

test('refuses to write into a target that is not empty', async (t) => {
  const box = sandbox(t)
  mkdirSync(box.target)
  writeFileSync(join(box.target, 'keep'), 'mine')
  const { root, source } = craft([[file('a')]])
  await assert.rejects(materialize(root, box.target, source), { code: 'ERR_MATERIALIZE', message: /empty directory/ })
  assert.equal(readFileSync(join(box.target, 'keep'), 'utf8'), 'mine')
})

test('a version 1 manifest, mtimes inside its entries, still materializes with them', async (t) => {
  const box = sandbox(t)
  const { root, source } = craft([[dir('d'), file('d/a', 'hello')]])
  await materialize(root, box.target, source)
  assert.equal(readFileSync(join(box.target, 'd/a'), 'utf8'), 'hello')
  assert.equal(Math.floor(lstatSync(join(box.target, 'd/a')).mtimeMs / 1000), 1_700_000_000)
  assert.equal(Math.floor(lstatSync(join(box.target, 'd')).mtimeMs / 1000), 1_700_000_000)
})

test('a version 2 manifest takes each mtime from its times block, seconds as differences', async (t) => {
  const box = sandbox(t)
  const { root, source } = craft([[noTime(dir('d')), noTime(file('d/a')), noTime(file('d/b'))]], {}, [{ mt: [1_700_000_000, 5, 100, 0, -50, 0] }])
  await materialize(root, box.target, source)
  const seconds = (p: string): number => Math.floor(lstatSync(join(box.target, p)).mtimeMs / 1000)
  assert.deepEqual([seconds('d'), seconds('d/a'), seconds('d/b')], [1_700_000_000, 1_700_000_100, 1_700_000_050])
})
