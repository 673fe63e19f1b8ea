import assert from 'node:assert/strict'
import { test } from 'node:test'
import { pino } from 'pino'
import * as dagCbor from '@ipld/dag-cbor'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { loadIdentity, RECORD_FORMAT, recordKey, signRecord, TrustPolicy } from '@strata/records'
import { openStore } from '@strata/store'
import { RecordNotFoundError } from '../src/index.ts'
import { RecordService } from '../src/record-service.ts'
import { tempDir } from '@strata/testing'
import { connect, startDaemon, writeFixedTree } from './helpers.ts'

const freshKey = (tag: string): ReturnType<typeof cidOf> => cidOf(DAG_CBOR, dagCbor.encode({ lookup: tag, at: process.hrtime.bigint().toString() }))

// A provider search that waited out its timeout would make these tests hang: it is set far beyond any test's length.
const SLOW_DHT = { providerTimeoutMs: 600_000 }

test('a daemon with no peer connected answers a lookup of an unknown key at once, saying so', { timeout: 120_000 }, async (t) => {
  const lone = await startDaemon(t, SLOW_DHT)
  await assert.rejects(lone.lookup(freshKey('lone')), (err: Error) => err instanceof RecordNotFoundError && /no peer is connected/.test(err.reason))
})

test('a lookup no peer can answer ends once every connected peer has said no', { timeout: 120_000 }, async (t) => {
  const daemons = [await startDaemon(t, SLOW_DHT), await startDaemon(t, SLOW_DHT), await startDaemon(t, SLOW_DHT)]
  await connect(daemons)
  await assert.rejects(daemons[0]!.lookup(freshKey('nobody')), (err: Error) => err instanceof RecordNotFoundError && /none of the 2 peers asked has one/.test(err.reason))
})

test('a connected peer that holds a record is asked directly, even if it never provided the key on the DHT', { timeout: 120_000 }, async (t) => {
  const [holder, reader] = [await startDaemon(t, SLOW_DHT), await startDaemon(t, SLOW_DHT)]
  await connect([holder, reader])
  const upper = `${tempDir(t)}/upper`
  writeFixedTree(upper, { f: 'held quietly' })
  const layer = await holder.store.commit(upper)
  const key = freshKey('quiet')
  const me = await loadIdentity(holder.dataDir)
  // Straight into the store: no gossip, no DHT provide.
  await holder.store.putRecord(recordKey(key, 'default'), signRecord({
    v: RECORD_FORMAT, key, parent: null, layer: layer.root, size: layer.size, env: [], created: 1, producer: me.peerId, scope: 'default', epoch: 0, writer: null
  }, me))
  const found = await reader.lookup(key)
  assert.equal(found.record.layer.toString(), layer.root.toString())
  assert.equal(found.record.producer, holder.peerId)
  assert.equal(found.source, 'peer', 'an answer from a peer asked directly is told from one the DHT named')
})

test('a lookup tells another node\'s record held here (gossip) from this node\'s own (local)', { timeout: 120_000 }, async (t) => {
  const dataDir = tempDir(t)
  const store = await openStore({ dataDir })
  t.after(async () => { await store.close() })
  const me = await loadIdentity(dataDir)
  const other = await loadIdentity(tempDir(t))
  const counters = { recordsLearned: 0, recordsRejected: 0 }
  const service = new RecordService({
    store,
    handle: async () => {},
    dialProtocol: async () => { throw new Error('no network in this test') },
    publish: async () => {},
    providers: () => { throw new Error('no DHT in this test') },
    provide: () => {},
    connectedPeers: () => [],
    routablePeers: () => 0,
    learned: () => {},
    logger: pino({ level: 'silent' })
  }, { self: me.peerId, trust: new TrustPolicy(me.peerId, undefined), readScopes: ['default'], maxProviders: 16, counters, rejected: {} })
  const layer = freshKey('layer')
  const record = (key: ReturnType<typeof freshKey>, by: typeof me): Uint8Array => signRecord({
    v: RECORD_FORMAT, key, parent: null, layer, size: 1, env: [], created: 1, producer: by.peerId, scope: 'default', epoch: 0, writer: null
  }, by)

  const theirs = freshKey('theirs')
  await service.announced(record(theirs, other))
  assert.equal((await service.lookup(theirs)).source, 'gossip', 'another node\'s record held here')
  const mine = freshKey('mine')
  await store.putRecord(recordKey(mine, 'default'), record(mine, me))
  assert.equal((await service.lookup(mine)).source, 'local', 'this node\'s own record')

  assert.equal(counters.recordsLearned, 1)
})
