import assert from 'node:assert/strict'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { cidOf, DAG_CBOR, LIMITS, MAX_BLOCK_SIZE } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import { tempDir } from '@strata/testing'
import { openStore } from '../src/index.ts'

// doc/LIMITS.md, manifest bytes per layer: a layer from a peer whose manifest blocks
// add up to more than LIMITS.manifestBytes is refused during restore.

test('a restore stops once the manifest passes its byte limit, and leaves nothing behind', async (t) => {
  const dir = tempDir(t)
  // Entry-list blocks of ~1 MiB: one empty file each, carrying xattrs the peer policy
  // strips (so the disk sees nothing), each block different by its path.
  const value = new Uint8Array(LIMITS.xattrValueBytes).fill(7)
  const xattrs = Array.from({ length: 15 }, (_, i) => [`trusted.${String.fromCharCode(97 + i)}`, value])
  const block = (i: number): Uint8Array => dagCbor.encode({ entries: [{ p: `f${String(i).padStart(5, '0')}`, t: 0, m: 0o644, u: 0, g: 0, mt: [0, 0], s: 0, x: xattrs }] })
  const first = block(0)
  assert.ok(first.length <= MAX_BLOCK_SIZE)
  const n = Math.ceil(LIMITS.manifestBytes / first.length) + 2
  // Only the CIDs are kept; a block is encoded again when it is asked for.
  const index = new Map<string, number>()
  const lists: CID[] = []
  for (let i = 0; i < n; i++) {
    const cid = cidOf(DAG_CBOR, block(i))
    index.set(cid.toString(), i)
    lists.push(cid)
  }
  const rootBytes = dagCbor.encode({ format: 'strata/layer', version: 1, count: n, size: 0, root: { m: 0o755, u: 0, g: 0, mt: [0, 0] }, entries: lists })
  const root = cidOf(DAG_CBOR, rootBytes)
  let served = 0
  const source = {
    async getBlock (cid: CID): Promise<Uint8Array> {
      if (cid.equals(root)) return rootBytes
      const i = index.get(cid.toString())
      if (i === undefined) throw new Error(`no block ${cid.toString()}`)
      served += first.length
      return block(i)
    }
  }
  const store = await openStore({ dataDir: join(dir, 'data') })
  t.after(async () => { await store.close() })
  await assert.rejects(store.restore(root, source, { untrusted: true }), (err: Error & { code?: string }) => {
    let e: unknown = err
    while (e instanceof Error && !/bytes of manifest/.test(e.message)) e = e.cause
    assert.ok(e instanceof Error, `${err.name}: ${err.message}`)
    assert.match(e.message, new RegExp(`more than ${LIMITS.manifestBytes} bytes of manifest`))
    return true
  })
  // It stopped at the limit, not at the end of the manifest: past it, only the few
  // entry lists the reader had asked for ahead (four) and the one that crossed it.
  assert.ok(served <= LIMITS.manifestBytes + 5 * first.length, `${served} bytes of manifest taken`)
  assert.equal(await store.getLayer(root), undefined)
  assert.deepEqual(readdirSync(join(dir, 'data', 'staging')), [], 'staging was not emptied')
})
