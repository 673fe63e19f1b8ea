import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { cidOf, decodeEntryList, decodeRoot, verifyBlock, RAW } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import type { Store } from './types.ts'

/** A store under test and how to end it. */
export interface OpenedStore {
  store: Store
  close: () => Promise<void>
}

/**
 * The behaviour the `Store` interface (src/types.ts) documents, for any
 * implementation: the local store (`openStore`) and the daemon's client run it.
 * Trees are written under /var/tmp, on the machine the store is on.
 */
export function storeCompliance (name: string, open: () => Promise<OpenedStore>): void {
  describe(`Store compliance: ${name}`, () => {
    let opened: OpenedStore
    let scratch: string
    let n = 0
    before(async () => {
      scratch = mkdtempSync('/var/tmp/strata-compliance-')
      opened = await open()
    })
    after(async () => {
      await opened?.close()
      rmSync(scratch, { recursive: true, force: true })
    })

    /** A new tree: a small file, a file large enough for content blocks, a subdirectory. */
    const tree = (seed = randomBytes(8).toString('hex')): string => {
      const dir = join(scratch, `tree-${n++}`)
      mkdirSync(join(dir, 'sub'), { recursive: true })
      writeFileSync(join(dir, 'small.txt'), `small ${seed}\n`)
      writeFileSync(join(dir, 'sub', 'big.bin'), Buffer.concat([Buffer.from(seed), randomBytes(300 * 1024)]))
      return dir
    }

    /** The CIDs of a layer's content blocks, read through the store's own getBlock. */
    const contentBlocks = async (store: Store, root: CID): Promise<CID[]> => {
      const out: CID[] = []
      const decoded = decodeRoot(await store.getBlock(root))
      for (const list of decoded.entries) {
        for (const e of decodeEntryList(await store.getBlock(list), { version: decoded.version })) for (const c of e.chunks ?? []) out.push(c.cid)
      }
      return out
    }

    test('commit moves a tree in as a layer that getLayer, has and listLayers show', async () => {
      const { store } = opened
      const src = tree()
      const layer = await store.commit(src)
      assert.equal(existsSync(src), false, 'the source dir was moved, not copied')
      assert.equal(layer.entries, 3)
      assert.equal(layer.size, 'small '.length + 17 + 16 + 300 * 1024)
      assert.ok(layer.blocks > 0)
      assert.ok(existsSync(join(layer.path, 'sub', 'big.bin')))
      const got = await store.getLayer(layer.root)
      assert.ok(got !== undefined)
      assert.equal(got.root.toString(), layer.root.toString())
      assert.deepEqual({ size: got.size, entries: got.entries, blocks: got.blocks, path: got.path }, { size: layer.size, entries: layer.entries, blocks: layer.blocks, path: layer.path })
      assert.equal(await store.has(layer.root), true)
      assert.ok((await store.listLayers()).some((l) => l.root.toString() === layer.root.toString()))
    })

    test('commit with keepSource copies, and the same tree committed again is the same layer', async () => {
      const { store } = opened
      const src = tree('same-tree-seed')
      const first = await store.commit(src, { keepSource: true })
      assert.ok(existsSync(join(src, 'sub', 'big.bin')), 'keepSource leaves the source')
      const again = await store.commit(src, { keepSource: true })
      assert.equal(again.root.toString(), first.root.toString())
      assert.equal((await store.listLayers()).filter((l) => l.root.toString() === first.root.toString()).length, 1)
    })

    test('a root the store does not hold: getLayer undefined, has false, checkLayer missing', async () => {
      const { store } = opened
      const absent = cidOf(RAW, randomBytes(64))
      assert.equal(await store.getLayer(absent), undefined)
      assert.equal(await store.has(absent), false)
      assert.deepEqual(await store.checkLayer(absent), { status: 'missing', root: absent.toString() })
    })

    test('getBlock returns verified manifest and content blocks; hasBlock says which blocks are here', async () => {
      const { store } = opened
      const layer = await store.commit(tree())
      const root = await store.getBlock(layer.root)
      verifyBlock(layer.root, root)
      assert.equal(await store.hasBlock(layer.root), true)
      const blocks = await contentBlocks(store, layer.root)
      assert.ok(blocks.length > 0)
      for (const cid of blocks) {
        verifyBlock(cid, await store.getBlock(cid))
        assert.equal(await store.hasBlock(cid), true)
      }
      const absent = cidOf(RAW, randomBytes(64))
      assert.equal(await store.hasBlock(absent), false)
      await assert.rejects(store.getBlock(absent), (err: Error & { code?: string }) => err.code === 'ERR_BLOCK_NOT_FOUND')
    })

    test('records: getRecord returns what putRecord stored, undefined for an unknown key, the last put wins', async () => {
      const { store } = opened
      const key = `compliance/${randomBytes(4).toString('hex')}`
      assert.equal(await store.getRecord(key), undefined)
      await store.putRecord(key, Uint8Array.of(1, 2, 3))
      assert.deepEqual([...(await store.getRecord(key))!], [1, 2, 3])
      await store.putRecord(key, Uint8Array.of(9))
      assert.deepEqual([...(await store.getRecord(key))!], [9])
    })

    test('checkLayer: ok for a layer as committed; a changed file makes it corrupt, and it is never offered again', async () => {
      const { store } = opened
      const layer = await store.commit(tree())
      const ok = await store.checkLayer(layer.root)
      assert.equal(ok.status, 'ok')
      assert.equal(ok.status === 'ok' ? ok.layer.root.toString() : '', layer.root.toString())
      // A chmod moves the file's ctime, as any write would (and works where fs-verity refuses writes).
      chmodSync(join(layer.path, 'small.txt'), 0o600)
      const bad = await store.checkLayer(layer.root)
      assert.equal(bad.status, 'corrupt')
      assert.equal(bad.status === 'corrupt' ? bad.reason : undefined, 'stat')
      assert.equal((await store.checkLayer(layer.root)).status, 'corrupt')
      assert.equal(await store.getLayer(layer.root), undefined)
      assert.equal(await store.has(layer.root), false)
      assert.ok(!(await store.listLayers()).some((l) => l.root.toString() === layer.root.toString()))
    })
  })
}
