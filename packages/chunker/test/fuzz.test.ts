import assert from 'node:assert/strict'
import { existsSync, lstatSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import type { CID } from 'multiformats/cid'
import { lgetxattrs } from '@strata/sys'
import { tempDir } from '@strata/testing'
import { ChunkerError, cidOf, comparePaths, DAG_CBOR, decodeEntryList, decodeRoot, FsPool, InvalidManifestError, materialize, removeTree } from '../src/index.ts'
import type { ContentSource } from '../src/index.ts'

/**
 * Property tests: whatever a peer sends as a manifest, the decoders and the
 * materializer answer with the package's own errors, and never write outside the
 * target. FUZZ_RUNS raises the number of cases (scripts/fuzz.ts).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 0) || undefined
const runs = (n: number): number => RUNS ?? n
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined
const params = (n: number): fc.Parameters<unknown> => ({ numRuns: runs(n), ...(SEED !== undefined ? { seed: SEED } : {}) })

/** Runs a decoder: it may refuse its input, but only with InvalidManifestError. */
function onlyInvalidManifest (fn: () => unknown): void {
  try {
    fn()
  } catch (err) {
    if (!(err instanceof InvalidManifestError)) throw new Error(`not an InvalidManifestError: ${String(err)}`, { cause: err })
    assert.equal(err.code, 'ERR_INVALID_MANIFEST')
  }
}

/** Mostly `good`, sometimes `bad`: each field of an entry is hostile now and then, so that whole layers still get written. */
const mostly = <A, B>(good: fc.Arbitrary<A>, bad: fc.Arbitrary<B>): fc.Arbitrary<A | B> => fc.oneof({ arbitrary: good, weight: 12 }, { arbitrary: bad, weight: 1 })

// Names a hostile layer would use, mixed with ordinary ones.
const hostileName = mostly(
  fc.stringMatching(/^[a-d]{1,2}(\/[a-d]{1,2}){0,2}$/),
  fc.oneof(
    fc.constantFrom('..', '.', '', '/', 'a/../..', '/etc/passwd', 'a\0b', 'etc', 'canary', '../canary', 'A', 'caf\u00e9', 'cafe\u0301', 'x'.repeat(256), '\u20ac'.repeat(100), 'd/../../x', 'a//b'),
    fc.string({ maxLength: 12 })
  )
)
const T = { file: 0, dir: 1, symlink: 2, hardlink: 3, whiteout: 4, fifo: 5, chardev: 6, blockdev: 7 }
const mode = mostly(fc.constantFrom(0o644, 0o755, 0o4755, 0o2755, 0o7777, 0o000, 0o1777), fc.constantFrom(0o100644, -1, 0o10000, 1.5))
const mtime = mostly(fc.tuple(fc.integer({ min: -(2 ** 40), max: 2 ** 40 }), fc.integer({ min: 0, max: 999_999_999 })), fc.tuple(fc.integer(), fc.integer({ min: -1, max: 2_000_000_000 })))
const xattrs = fc.option(fc.array(fc.tuple(mostly(fc.constantFrom('user.a', 'user.b', 'security.capability', 'trusted.x', 'security.selinux'), fc.constantFrom('trusted.overlay.opaque', 'user.overlay.redirect', '')), fc.uint8Array({ maxLength: 8 })), { maxLength: 3 }).map((x) => [...new Map(x).entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))), { nil: undefined, freq: 3 })

const rawEntry = fc.record({
  p: hostileName,
  t: mostly(fc.constantFrom(T.file, T.file, T.file, T.dir, T.dir, T.symlink, T.symlink, T.hardlink, T.whiteout, T.fifo, T.chardev, T.blockdev), fc.integer({ min: -1, max: 9 })),
  m: mode,
  u: mostly(fc.constantFrom(0, 1000, 65534), fc.constant(2 ** 32)),
  g: fc.constantFrom(0, 1000),
  mt: mtime,
  data: fc.option(fc.uint8Array({ minLength: 0, maxLength: 40 }), { nil: undefined }),
  l: fc.option(hostileName, { nil: undefined, freq: 12 }),
  r: fc.option(fc.tuple(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 300 })), { nil: undefined }),
  x: xattrs,
  o: fc.option(mostly(fc.constant(true), fc.constant(1)), { nil: undefined })
}).map((e) => {
  const o: Record<string, unknown> = { p: e.p, t: e.t, m: e.m, u: e.u, g: e.g, mt: e.mt }
  if (e.t === T.file) {
    o.s = e.data?.length ?? 0
    if (e.data !== undefined && e.data.length > 0) o.d = e.data
  }
  if (e.l !== undefined && (e.t === T.symlink || e.t === T.hardlink)) o.l = e.l
  if (e.r !== undefined && (e.t === T.chardev || e.t === T.blockdev)) o.r = e.r
  if (e.x !== undefined) o.x = e.x
  if (e.o !== undefined && e.t === T.dir) o.o = e.o
  return o
})

/** A manifest encoded exactly as given: sorted (mostly) but unchecked. */
function craft (entries: Array<Record<string, unknown>>, sort: boolean): { root: CID, source: ContentSource } {
  const blocks = new Map<string, Uint8Array>()
  const put = (bytes: Uint8Array): CID => {
    const cid = cidOf(DAG_CBOR, bytes)
    blocks.set(cid.toString(), bytes)
    return cid
  }
  let list = entries
  if (sort) {
    // Mostly well-formed: every parent present as a directory, one entry per path, in order.
    const byPath = new Map<string, Record<string, unknown>>()
    for (const e of entries) {
      const parts = String(e.p).split('/')
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join('/')
        if (!byPath.has(dir)) byPath.set(dir, { p: dir, t: T.dir, m: 0o755, u: 0, g: 0, mt: [0, 0] })
      }
      if (!byPath.has(String(e.p))) byPath.set(String(e.p), e)
    }
    list = [...byPath.values()].sort((a, b) => comparePaths(String(a.p), String(b.p)))
  }
  const half = Math.ceil(list.length / 2)
  const lists = [list.slice(0, half), list.slice(half)].filter((l) => l.length > 0).map((l) => put(dagCbor.encode({ entries: l })))
  const size = list.reduce((n, e) => n + (typeof e.s === 'number' ? e.s : 0), 0)
  const root = put(dagCbor.encode({ format: 'strata/layer', version: 1, count: list.length, size, root: { m: 0o755, u: 0, g: 0, mt: [0, 0] }, entries: lists }))
  return {
    root,
    source: {
      async getBlock (cid) {
        const b = blocks.get(cid.toString())
        if (b === undefined) throw new Error(`missing ${cid.toString()}`)
        return b
      }
    }
  }
}

test('the manifest decoders throw only InvalidManifestError on arbitrary bytes', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => {
    onlyInvalidManifest(() => decodeRoot(bytes))
    onlyInvalidManifest(() => decodeEntryList(bytes))
  }), params(2000))
})

test('the manifest decoders throw only InvalidManifestError on arbitrary dag-cbor values', () => {
  const value = fc.letrec((tie) => ({
    v: fc.oneof({ depthSize: 'small' }, fc.integer(), fc.double(), fc.string(), fc.boolean(), fc.constant(null), fc.uint8Array({ maxLength: 16 }),
      fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(fc.constantFrom('format', 'version', 'count', 'size', 'root', 'entries', 'p', 't', 'm', 'x', 'c', 'd', 'l', 's'), tie('v'), { maxKeys: 6 }))
  })).v
  fc.assert(fc.property(value, fc.array(rawEntry, { maxLength: 6 }), (v, entries) => {
    let bytes: Uint8Array
    try {
      bytes = dagCbor.encode(v)
    } catch {
      return // NaN, Infinity, undefined: not encodable, so no peer can send them
    }
    onlyInvalidManifest(() => decodeRoot(bytes))
    onlyInvalidManifest(() => decodeEntryList(bytes))
    onlyInvalidManifest(() => decodeEntryList(dagCbor.encode({ entries })))
  }), params(1000))
})

test('an entry-list block or root with any field beside the format\'s is refused', () => {
  const reserved = new Set(['format', 'version', 'count', 'size', 'root', 'entries'])
  fc.assert(fc.property(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => !reserved.has(k)), fc.oneof(fc.integer(), fc.uint8Array({ maxLength: 64 }), fc.string()), (k, v) => {
    const entry = { p: 'a', t: 0, m: 0o644, u: 0, g: 0, mt: [0, 0], s: 0 }
    assert.doesNotThrow(() => decodeEntryList(dagCbor.encode({ entries: [entry] })))
    assert.throws(() => decodeEntryList(dagCbor.encode({ entries: [entry], [k]: v })), { code: 'ERR_INVALID_MANIFEST', message: /unexpected field/ })
    const root = { format: 'strata/layer', version: 1, count: 0, size: 0, root: { m: 0o755, u: 0, g: 0, mt: [0, 0] }, entries: [] }
    assert.doesNotThrow(() => decodeRoot(dagCbor.encode(root)))
    assert.throws(() => decodeRoot(dagCbor.encode({ ...root, [k]: v })), { code: 'ERR_INVALID_MANIFEST', message: /unexpected field/ })
  }), params(300))
})

test('a deeply nested dag-cbor block is a typed error, not a stack overflow', () => {
  // 200k nested one-element arrays in well under one block.
  const depth = 200_000
  const bytes = new Uint8Array(depth + 1).fill(0x81)
  bytes[depth] = 0x00
  assert.throws(() => decodeRoot(bytes), { code: 'ERR_INVALID_MANIFEST' })
  assert.throws(() => decodeEntryList(bytes), { code: 'ERR_INVALID_MANIFEST' })
})

test('a peer layer keeps user.* xattrs only: security.capability and trusted.* are stripped, setuid and setgid too', async (t) => {
  const base = tempDir(t)
  const x = (n: string): [string, Uint8Array] => [n, Uint8Array.of(1, 2, 3)]
  const { root, source } = craft([
    { p: 'bin', t: T.file, m: 0o6755, u: 0, g: 0, mt: [0, 0], s: 2, d: Uint8Array.of(1, 2), x: [x('security.capability'), x('security.selinux'), x('trusted.md5'), x('user.kept')] },
    { p: 'd', t: T.dir, m: 0o2755, u: 0, g: 0, mt: [0, 0], x: [x('security.capability'), x('user.kept')] }
  ], false)
  await materialize(root, join(base, 'out'), source, { untrusted: true })
  for (const p of ['bin', 'd']) {
    assert.deepEqual(lgetxattrs(join(base, 'out', p)).map(([n]) => n), ['user.kept'])
    assert.equal(lstatSync(join(base, 'out', p)).mode & 0o6000, 0)
  }
})

test('materializing random hostile trees: typed errors only, nothing outside the target, peer policy held', async (t) => {
  const base = tempDir(t)
  const pool = new FsPool()
  t.after(async () => { await pool.close() })
  const canary = join(base, 'canary')
  writeFileSync(canary, 'do not touch')
  const canaryTime = lstatSync(canary, { bigint: true }).mtimeNs
  let n = 0
  let written = 0
  await fc.assert(fc.asyncProperty(fc.array(rawEntry, { minLength: 1, maxLength: 12 }), fc.boolean(), async (entries, sort) => {
    const target = join(base, `t${n++}`)
    const { root, source } = craft(entries, sort)
    let ok = true
    try {
      await materialize(root, target, source, { untrusted: true, pool })
    } catch (err) {
      ok = false
      if (!(err instanceof ChunkerError)) throw new Error(`untyped error: ${String(err)}`, { cause: err })
      assert.equal(existsSync(target), false, 'the partial output was left behind')
    }
    assert.equal(readFileSync(canary, 'utf8'), 'do not touch')
    assert.equal(lstatSync(canary, { bigint: true }).mtimeNs, canaryTime)
    assert.deepEqual(readdirSync(base).filter((x) => x !== 'canary' && !x.startsWith('t')), [], 'something was written beside the target')
    if (ok) {
      // The peer policy: no setuid/setgid bit, no device but a whiteout, only user.* xattrs.
      const walk = (dir: string): void => {
        for (const name of readdirSync(dir)) {
          const p = join(dir, name)
          const st = lstatSync(p)
          assert.equal(st.mode & 0o6000, 0, `${p} kept a setuid/setgid bit`)
          if (st.isBlockDevice()) assert.fail(`${p} is a block device`)
          if (st.isCharacterDevice()) assert.equal(st.rdev, 0, `${p} is a device other than a whiteout`)
          for (const [x] of lgetxattrs(p)) assert.ok(x.startsWith('user.') || x === 'trusted.overlay.opaque', `${p} kept xattr ${x}`)
          if (st.isDirectory()) walk(p)
        }
      }
      walk(target)
      removeTree(target)
      written++
    }
  }), params(300))
  t.diagnostic(`${written} of ${n} random layers were written, the rest refused`)
  assert.ok(written > 0, 'no random layer was ever valid: the generator tests only the decoder')
})
