import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import * as dagCbor from '@ipld/dag-cbor'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { loadIdentity, RECORD_FORMAT, recordKey, signRecord } from '@strata/records'
import { createDaemon } from './src/index.ts'
const ds = []
for (let i = 0; i < 9; i++) {
  const d = await createDaemon({ dataDir: mkdtempSync('/var/tmp/writers-exp/d-'), listen: ['/ip4/127.0.0.1/tcp/0'], replicas: 0 })
  await d.start(); ds.push(d)
}
const me = ds[8]!
for (const d of ds.slice(0, 8)) await me.node.dial(d.node.getMultiaddrs()[0]!)
for (const d of ds.slice(1, 8)) await d.node.dial(ds[0]!.node.getMultiaddrs()[0]!)
await new Promise((r) => setTimeout(r, 2000))
console.log('rt', (me.node.services.dht as any).routingTable.size, me.node.getPeers().length)
const id = await loadIdentity(me.dataDir)
for (let i = 0; i < 8; i++) {
  const key = cidOf(DAG_CBOR, dagCbor.encode({ x: randomBytes(8) }))
  const t = performance.now()
  try { await me.lookup(key) } catch (e) { }
  const t2 = performance.now()
  const dir = mkdtempSync('/var/tmp/writers-exp/u-'); writeFileSync(dir + '/f', randomBytes(10))
  const layer = await me.commit(dir)
  await me.putRecord(recordKey(key, 'default'), signRecord({ v: RECORD_FORMAT, key, parent: null, layer: layer.root, size: 1, env: [], created: 1, producer: id.peerId, scope: 'default', epoch: 0, writer: null }, id))
  console.log('lookup ms', (t2 - t).toFixed(1), 'put ms', (performance.now() - t2).toFixed(1))
}
for (const d of ds) { await d.stop(); rmSync(d.dataDir, { recursive: true, force: true }) }
