import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import fc from 'fast-check'
import { Key } from 'interface-datastore'
import { decode as decodeVarint, encode as encodeVarint } from 'uint8-varint'
import { base32 } from 'multiformats/bases/base32'
import { ClassicLevel } from 'classic-level'
import { tempDir } from '@strata/testing'
import { BoundedDhtStore, ProviderValueError } from '../src/dht-store.ts'

const PREFIX = '/dht-strata'
const providerKey = (cid: string, peer: string): Key => new Key(`${PREFIX}/provider/${cid}/${peer}`)
const time = (ms: number): Uint8Array => encodeVarint(ms)

/** A LevelDB for provider records, closed when the test ends. */
function levelOf (t: TestContext): ClassicLevel<string, string> {
  const db = new ClassicLevel<string, string>(`${tempDir(t)}/dht`, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  t.after(async () => { await db.close() })
  return db
}
test('provider records answer put, get, has, delete and query as datastore entries; other keys are kept as before', async (t) => {
  const store = await BoundedDhtStore.open(PREFIX, levelOf(t))
  await store.put(providerKey('mha', 'p1'), time(1000))
  await store.put(providerKey('mha', 'p2'), time(2000))
  await store.put(providerKey('mhb', 'p1'), time(3000))
  await store.put(new Key('/peers/x'), new Uint8Array([1, 2]))
  await store.put(new Key(`${PREFIX}/record/r`), new Uint8Array([3]))

  assert.deepEqual(await store.get(providerKey('mha', 'p2')), time(2000))
  assert.equal(await store.has(providerKey('mhb', 'p1')), true)
  assert.equal(await store.has(providerKey('mhb', 'p2')), false)
  await assert.rejects(async () => await store.get(providerKey('mhb', 'p2')), { name: 'NotFoundError' })

  const keysUnder = async (prefix: string): Promise<string[]> => {
    const out: string[] = []
    for await (const k of store.queryKeys({ prefix })) out.push(k.toString())
    return out.sort()
  }
  assert.deepEqual(await keysUnder(`${PREFIX}/provider/mha`), [`${PREFIX}/provider/mha/p1`, `${PREFIX}/provider/mha/p2`])
  assert.deepEqual(await keysUnder(`${PREFIX}/provider/mha/p2`), [`${PREFIX}/provider/mha/p2`])
  assert.deepEqual(await keysUnder(`${PREFIX}/provider/mh`), [`${PREFIX}/provider/mha/p1`, `${PREFIX}/provider/mha/p2`, `${PREFIX}/provider/mhb/p1`])
  assert.deepEqual(await keysUnder(`${PREFIX}/provider`), await keysUnder(`${PREFIX}/provider/`))
  assert.deepEqual(await keysUnder('/peers'), ['/peers/x'])
  assert.deepEqual(await keysUnder('/'), ['/dht-strata/provider/mha/p1', '/dht-strata/provider/mha/p2', '/dht-strata/provider/mhb/p1', '/dht-strata/record/r', '/peers/x'])
  const values = new Map<string, Uint8Array>()
  for await (const { key, value } of store.query({ prefix: `${PREFIX}/provider/` })) values.set(key.toString(), value)
  assert.deepEqual(values.get(`${PREFIX}/provider/mhb/p1`), time(3000))
  for (const v of values.values()) assert.equal(v.buffer.byteLength, v.byteLength, 'a value shares its buffer')

  await store.delete(providerKey('mha', 'p1'))
  assert.deepEqual(await keysUnder(`${PREFIX}/provider/mha`), [`${PREFIX}/provider/mha/p2`])
  assert.deepEqual(store.providerStats, { records: 2, peers: 2 })
  await store.delete(providerKey('mha', 'p2'))
  assert.deepEqual(store.providerStats, { records: 1, peers: 1 })
  assert.deepEqual(await keysUnder(`${PREFIX}/provider/mha`), [])
})

test('a provider record whose value is not one varint time is refused, naming the key', async (t) => {
  const store = await BoundedDhtStore.open(PREFIX, levelOf(t))
  await assert.rejects(async () => await store.put(providerKey('mh', 'p'), new Uint8Array([0x80])), (err: unknown) => err instanceof ProviderValueError && err.message.includes(`${PREFIX}/provider/mh/p`))
  await assert.rejects(async () => await store.put(providerKey('mh', 'p'), new Uint8Array([1, 2])), ProviderValueError)
  assert.deepEqual(store.providerStats, { records: 0, peers: 0 })
})

test('the provider table drops what a list kept oldest first would drop, under any puts, renewals and deletes', async (t) => {
  const db = levelOf(t)
  let run = 0
  const op = fc.record({ kind: fc.constantFrom('put', 'put', 'put', 'delete'), cid: fc.integer({ min: 0, max: 7 }), peer: fc.integer({ min: 0, max: 3 }) })
  await fc.assert(fc.asyncProperty(fc.array(op, { maxLength: 120 }), fc.integer({ min: 1, max: 10 }), fc.integer({ min: 1, max: 6 }), async (ops, total, perPeer) => {
    const store = await BoundedDhtStore.open(PREFIX, db.sublevel(`run${run++}`), { providers: total, providersPerPeer: perPeer })
    // The model: records oldest first; a renewal moves a record to the end.
    const model = new Map<string, number>()
    let clock = 1_700_000_000_000
    for (const { kind, cid, peer } of ops) {
      const k = providerKey(`mh${cid}`, `p${peer}`).toString()
      if (kind === 'delete') {
        model.delete(k)
        await store.delete(new Key(k))
        continue
      }
      const t = ++clock
      if (!model.has(k)) {
        const own = [...model.keys()].filter((m) => m.endsWith(`/p${peer}`))
        if (own.length >= perPeer) model.delete(own[0]!)
        if (model.size >= total) model.delete(model.keys().next().value!)
      }
      model.delete(k)
      model.set(k, t)
      await store.put(new Key(k), time(t))
    }
    const held = new Map<string, number>()
    for await (const { key, value } of store.query({ prefix: `${PREFIX}/provider/` })) held.set(key.toString(), decodeVarint(value))
    assert.deepEqual(new Map([...held].sort()), new Map([...model].sort()))
    assert.equal(store.providerStats.records, model.size)
    assert.equal(store.providerStats.peers, new Set([...model.keys()].map((k) => k.split('/').at(-1))).size)
  }), { numRuns: 300 })
})

test('provider records live on disk: the heap holds nothing per record, and a reopened table has them all', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const dir = `${tempDir(t)}/dht`
  const peers = Array.from({ length: 8 }, () => `12D3KooW${base32.baseEncode(randomBytes(32)).slice(0, 44)}`)
  const cids = Array.from({ length: 9000 }, () => base32.baseEncode(randomBytes(34)))
  const heap = (): number => {
    gc()
    gc()
    return process.memoryUsage().heapUsed
  }
  let db = new ClassicLevel<string, string>(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  t.after(async () => { await db.close() })
  let store = await BoundedDhtStore.open(PREFIX, db)
  const now = Date.now()
  let n = 0
  // As a fleet fills it: each CID provided by 4 of the 8 peers, each put made from a fresh key text.
  const fill = async (from: number, to: number): Promise<void> => {
    for (const [i, cid] of cids.slice(from, to).entries()) {
      await Promise.all(Array.from({ length: 4 }, async (_, j) => await store.put(new Key(`${PREFIX}/provider/${cid}/${peers[(from + i + j) % peers.length]!}`), time(now + n++))))
    }
  }
  await fill(0, 1000) // warm: code compiled, LevelDB's first tables made
  const before = heap()
  await fill(1000, cids.length)
  const perRecord = (heap() - before) / (n - 4000)
  // In the heap, a table of them cost ~260 bytes a record, datastore entries ~700; the
  // heap itself moves by about a megabyte between runs.
  assert.ok(perRecord < 60, `${perRecord.toFixed(0)} bytes of heap per provider record`)
  assert.deepEqual(store.providerStats, { records: n, peers: 8 })
  // What LevelDB holds in memory is told (its memtable holds the latest writes); a closed one says 0.
  assert.ok(store.dbMemory > 0, `${store.dbMemory}`)

  await db.close()
  assert.equal(store.dbMemory, 0)
  db = new ClassicLevel<string, string>(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  store = await BoundedDhtStore.open(PREFIX, db)
  assert.deepEqual(store.providerStats, { records: n, peers: 8 }, 'the counts are read back')
  const held: string[] = []
  for await (const k of store.queryKeys({ prefix: `${PREFIX}/provider/${cids[77]!}` })) held.push(k.toString().split('/').at(-1)!)
  assert.deepEqual(held.sort(), [0, 1, 2, 3].map((j) => peers[(77 + j) % 8]!).sort())
})
