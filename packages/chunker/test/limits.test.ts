import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { cidOf, DAG_CBOR, decodeEntryList, decodeRoot, LIMITS, MAX_BLOCK_SIZE } from '../src/index.ts'

// Each manifest limit of doc/LIMITS.md, at the limit (accepted) and one past it (refused).
type Raw = Record<string, unknown>
const attrs = { m: 0o644, u: 0, g: 0, mt: [0, 0] }
const file = (p: string, extra: Raw = {}): Raw => ({ p, t: 0, ...attrs, s: 0, ...extra })
const decodeOne = (e: Raw): unknown => decodeEntryList(dagCbor.encode({ entries: [e] }))
const inline = (n: number): Raw => ({ s: n, d: new Uint8Array(n).fill(1) })
const xattrList = (n: number, valueBytes = 1): Array<[string, Uint8Array]> => Array.from({ length: n }, (_, i) => [`user.${String(i).padStart(3, '0')}`, new Uint8Array(valueBytes)])
const nested = (components: number): string => Array.from({ length: components }, () => 'a').join('/')

const cases: Array<{ limit: string, at: Raw, over: Raw, message: RegExp }> = [
  { limit: 'pathBytes', at: file(`${'abcdefgh/'.repeat(455)}${'x'.repeat(LIMITS.pathBytes - 9 * 455)}`), over: file(`${'abcdefgh/'.repeat(455)}${'x'.repeat(LIMITS.pathBytes - 9 * 455 + 1)}`), message: /longer than 4096 bytes/ },
  { limit: 'depth', at: file(nested(LIMITS.depth)), over: file(nested(LIMITS.depth + 1)), message: /deeper than 512/ },
  { limit: 'nameBytes', at: file('n'.repeat(LIMITS.nameBytes)), over: file('n'.repeat(LIMITS.nameBytes + 1)), message: /component longer than 255/ },
  { limit: 'symlinkBytes', at: { p: 'l', t: 2, ...attrs, l: 't'.repeat(LIMITS.symlinkBytes) }, over: { p: 'l', t: 2, ...attrs, l: 't'.repeat(LIMITS.symlinkBytes + 1) }, message: /symlink target/ },
  { limit: 'xattrs', at: file('f', { x: xattrList(LIMITS.xattrs) }), over: file('f', { x: xattrList(LIMITS.xattrs + 1) }), message: /at most 64 pairs/ },
  { limit: 'xattrNameBytes', at: file('f', { x: [[`user.${'n'.repeat(LIMITS.xattrNameBytes - 5)}`, new Uint8Array(1)]] }), over: file('f', { x: [[`user.${'n'.repeat(LIMITS.xattrNameBytes - 4)}`, new Uint8Array(1)]] }), message: /bad xattr name/ },
  { limit: 'xattrValueBytes', at: file('f', { x: xattrList(1, LIMITS.xattrValueBytes) }), over: file('f', { x: xattrList(1, LIMITS.xattrValueBytes + 1) }), message: /value must be bytes of at most 65536/ },
  { limit: 'inlineBytes', at: file('f', inline(LIMITS.inlineBytes)), over: file('f', inline(LIMITS.inlineBytes + 1)), message: /inline data must be bytes of at most 65536/ },
  { limit: 'fileSize', at: file('f', { s: LIMITS.fileSize, c: [] }), over: file('f', { s: LIMITS.fileSize + 1, c: [] }), message: /size must be an integer in 0\.\.281474976710656/ }
]

for (const c of cases) {
  test(`manifest limit ${c.limit}: accepted at the limit, refused one past it`, () => {
    // fileSize: the entry at the limit fails later, on its (empty) chunk list, not on its size.
    if (c.limit === 'fileSize') assert.throws(() => decodeOne(c.at), /chunks must be/)
    else assert.doesNotThrow(() => decodeOne(c.at))
    assert.throws(() => decodeOne(c.over), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_INVALID_MANIFEST')
      assert.match(err.message, c.message)
      return true
    })
  })
}

function root (fields: Raw): Uint8Array {
  return dagCbor.encode({ format: 'strata/layer', version: 1, count: 1, size: 0, root: attrs, entries: [cidOf(DAG_CBOR, Uint8Array.of(0xa0))], ...fields })
}

test('manifest limit entries: a root declaring more than 10 million entries is refused', () => {
  assert.equal(decodeRoot(root({ count: LIMITS.entries })).count, LIMITS.entries)
  assert.throws(() => decodeRoot(root({ count: LIMITS.entries + 1 })), { code: 'ERR_INVALID_MANIFEST', message: /count must be an integer in 0\.\.10000000/ })
})

test('manifest limit entryBlocks: a root linking more than 20 000 entry-list blocks is refused', () => {
  const links = (n: number): unknown[] => Array.from({ length: n }, (_, i) => cidOf(DAG_CBOR, dagCbor.encode({ i })))
  const at = root({ entries: links(LIMITS.entryBlocks) })
  assert.ok(at.length <= MAX_BLOCK_SIZE, 'a root at the limit fits one block')
  assert.equal(decodeRoot(at).entries.length, LIMITS.entryBlocks)
  assert.throws(() => decodeRoot(root({ entries: links(LIMITS.entryBlocks + 1) })), { code: 'ERR_INVALID_MANIFEST', message: /at most 20000 block links/ })
})
