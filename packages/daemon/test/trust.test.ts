import assert from 'node:assert/strict'
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import type { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { generateWriterKey, loadIdentity, RECORD_FORMAT, recordKey, signRecord } from '@strata/records'
import type { StepRecord } from '@strata/records'
import { memoryLogger, tempDir } from '@strata/testing'
import { DaemonConfigError, parsePeerList, parsePsk, RecordNotFoundError, writePsk, writerOf } from '../src/index.ts'
import type { Daemon } from '../src/index.ts'
import { connect, publishLayer, startDaemon, writeFixedTree } from './helpers.ts'

const freshKey = (tag: string): CID => cidOf(DAG_CBOR, dagCbor.encode({ trust: tag, at: process.hrtime.bigint().toString() }))

async function pskFile (t: TestContext): Promise<string> {
  const path = `${tempDir(t)}/swarm.key`
  await writePsk(path)
  return path
}

test('keygen writes a 0600 swarm.key that parses, and never overwrites one', async (t) => {
  const path = await pskFile(t)
  assert.equal(statSync(path).mode & 0o777, 0o600)
  assert.equal(parsePsk(readFileSync(path, 'utf8'), path).length, 95)
  await assert.rejects(writePsk(path), (err: Error) => err instanceof DaemonConfigError && /exists: not overwriting/.test(err.message))
})

test('a bad key file or peer list is an error naming the file (and line) and the problem', async (t) => {
  assert.throws(() => parsePsk('/key/swarm/psk/1.0.0/\n/base16/\nabc\n', '/etc/k'), { code: 'ERR_DAEMON_CONFIG', message: /^\/etc\/k: .*line 3 must be 64 hex digits/ })
  assert.throws(() => parsePsk('/key/swarm/psk/1.0.0/\n/base64/\n' + 'a'.repeat(64), '/etc/k'), { message: /line 2 must be \/base16\// })
  assert.throws(() => parsePsk('hello', '/etc/k'), { message: /line 1 must be/ })
  const good = '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf'
  assert.deepEqual(parsePeerList(`# the fleet\n${good}  # ci-1\n\n`, '/etc/peers'), [good])
  assert.throws(() => parsePeerList(`${good}\nnot-a-peer\n`, '/etc/peers'), { code: 'ERR_DAEMON_CONFIG', message: /^\/etc\/peers:2: "not-a-peer" is not a peer id/ })
  // A raw ed25519 public key (hex) names the same peer as its peer id.
  const me = await loadIdentity(tempDir(t))
  assert.deepEqual(parsePeerList(Buffer.from(me.publicKey).toString('hex'), '/etc/peers'), [me.peerId])
  // Writer keys in a trusted-writers file: kept as given; a bad line is named by file and line.
  const { key: w } = generateWriterKey('ci-main-1')
  assert.deepEqual(parsePeerList(`# main's key\n${w.id}@main\n${me.peerId}@pr/*\n`, '/etc/writers', writerOf), [`${w.id}@main`, `${me.peerId}@pr/*`])
  assert.throws(() => parsePeerList(`${w.id}@main\nci-main-1:c2hvcnQ=@main\n`, '/etc/writers', writerOf), { code: 'ERR_DAEMON_CONFIG', message: /^\/etc\/writers:2: "ci-main-1:c2hvcnQ=@main" is not a trusted writer \(NAME-N:BASE64 or a peer id, optionally @SCOPES\)/ })
  await assert.rejects(startDaemon(t, { trustedWriters: ['nobody'] }), { code: 'ERR_DAEMON_CONFIG', message: /"nobody" is not a writer key \(NAME-N:BASE64\), a peer id or an ed25519 public key/ })
})

test('--require-psk without a key refuses to start', async (t) => {
  await assert.rejects(startDaemon(t, { requirePsk: true }), (err: Error) => err instanceof DaemonConfigError && /pre-shared key is required/.test(err.message))
})

test('a peer without the fleet\'s pre-shared key cannot connect; one with it can', async (t) => {
  const psk = await pskFile(t)
  const a = await startDaemon(t, { pskFile: psk, requirePsk: true })
  // b's copy of the key is readable by everyone: it works, with a warning.
  const loose = `${tempDir(t)}/swarm.key`
  writeFileSync(loose, readFileSync(psk), { mode: 0o644 })
  chmodSync(loose, 0o644)
  const { logger, lines } = memoryLogger()
  const b = await startDaemon(t, { pskFile: loose, logger })
  assert.ok(lines.some((l) => l.level === 40 && l.event === 'psk-file-readable' && l.file === loose))
  const outsider = await startDaemon(t)
  const otherKey = await startDaemon(t, { pskFile: await pskFile(t) })
  await connect([a, b])
  assert.ok(a.node.getPeers().map(String).includes(b.peerId))
  const { key } = await publishLayer(t, a, { f: 'private' })
  assert.ok((await b.resolve(key)).layer !== undefined, 'a member fetches from the private fleet')
  for (const d of [outsider, otherKey]) {
    await assert.rejects(d.node.dial(a.node.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(5000) }))
    assert.ok(!a.node.getPeers().map(String).includes(d.peerId))
  }
  assert.equal((await a.status({ copies: false })).privateNetwork, true)
})

test('a peer not on the allow-list is refused after the handshake, before any protocol', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  const list = `${tempDir(t)}/peers`
  writeFileSync(list, `# allowed\n${a.peerId}\n`)
  const c = await startDaemon(t, { allowPeersFile: list })
  const seen: string[] = []
  c.node.addEventListener('connection:open', (e) => seen.push(e.detail.remotePeer.toString()))
  c.node.addEventListener('peer:identify', (e) => seen.push(`identify:${e.detail.peerId.toString()}`))
  await a.node.dial(c.node.getMultiaddrs()[0]!)
  await b.node.dial(c.node.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(3000) }).catch(() => {})
  await assert.rejects(b.node.dialProtocol(c.node.peerId, '/strata/records/2.0.0', { signal: AbortSignal.timeout(3000) }))
  assert.ok(seen.includes(a.peerId))
  assert.ok(!seen.some((s) => s.includes(b.peerId)), `c saw ${seen.join(', ')}`)
  assert.deepEqual(c.node.getPeers().map(String), [a.peerId])
  // c's peer store learned no protocol of b: identify never ran over a gated connection.
  const known = await c.node.peerStore.get(b.node.peerId).catch(() => undefined)
  assert.deepEqual(known?.protocols ?? [], [])
})

/** A record as `signer` would sign it, for `key` in `scope`. */
function recordFor (signer: { peerId: string }, key: CID, layer: CID, over: Partial<StepRecord> = {}): StepRecord {
  return { v: RECORD_FORMAT, key, parent: null, layer, size: 1, env: [], created: Date.now(), producer: signer.peerId, scope: 'main', epoch: 5, writer: null, ...over }
}

/**
 * The adversarial rows for records: `evil` serves `bytes` as the record of a fresh
 * key in scope `main`, holds the layer, and provides the key on the DHT; the reader
 * trusts only `writer`, reads `main`, and is in epoch 5.
 */
test('bad records are each a miss with the reason logged and counted, and their layer is never fetched', async (t) => {
  const writer = await startDaemon(t, { epoch: 5 })
  const evil = await startDaemon(t)
  const { logger, lines } = memoryLogger()
  const reader = await startDaemon(t, { trustedWriters: [writer.peerId], epoch: 5, readScopes: ['main'], logger, metricsListen: '127.0.0.1:0' })
  await connect([writer, evil, reader])
  const w = await loadIdentity(writer.dataDir)
  const e = await loadIdentity(evil.dataDir)
  const upper = `${tempDir(t)}/u`
  writeFixedTree(upper, { 'payload.sh': 'echo owned' })
  const layer = (await evil.commit(upper)).root
  const envelope = (body: unknown, sig?: Uint8Array): Uint8Array => dagCbor.encode(sig === undefined ? { body: dagCbor.encode(body) } : { body: dagCbor.encode(body), sig })
  const sigOf = (bytes: Uint8Array): Uint8Array => dagCbor.decode<{ sig: Uint8Array }>(bytes).sig

  const cases: Array<{ reason: string, bytes: (key: CID) => Uint8Array }> = [
    { reason: 'unsigned', bytes: (key) => envelope(recordFor(w, key, layer)) },
    { reason: 'untrusted-signer', bytes: (key) => signRecord(recordFor(e, key, layer), e) },
    {
      // The writer's real signature over another key's record, replayed for this key.
      reason: 'bad-signature',
      bytes: (key) => envelope(recordFor(w, key, layer, { created: 1 }), sigOf(signRecord(recordFor(w, freshKey('other'), layer, { created: 1 }), w)))
    },
    {
      // ...and over the same key with another layer.
      reason: 'bad-signature',
      bytes: (key) => envelope(recordFor(w, key, layer, { created: 1 }), sigOf(signRecord(recordFor(w, key, freshKey('layer'), { created: 1 }), w)))
    },
    { reason: 'wrong-scope', bytes: (key) => signRecord(recordFor(w, key, layer, { scope: 'pr/666' }), w) },
    { reason: 'old-epoch', bytes: (key) => signRecord(recordFor(w, key, layer, { epoch: 4 }), w) },
    { reason: 'version', bytes: (key) => envelope({ v: 1, key, parent: null, layer, size: 1, env: [], created: 1, producer: w.peerId }, new Uint8Array(64)) }
  ]
  for (const c of cases) {
    const key = freshKey(c.reason)
    await evil.store.putRecord(recordKey(key, 'main'), c.bytes(key))
    await evil.node.contentRouting.provide(key)
    await assert.rejects(reader.resolve(key), (err: Error) => {
      assert.ok(err instanceof RecordNotFoundError, String(err))
      assert.match(err.reason, new RegExp(`\\(${c.reason}\\)`))
      return true
    }, c.reason)
    assert.ok(lines.some((l) => l.reason === c.reason && l.key === key.toString()), `the ${c.reason} refusal is logged with its reason`)
    assert.equal(await reader.store.getRecord(recordKey(key, 'main')), undefined, 'the refused record is not kept')
  }
  assert.equal(await reader.store.has(layer), false, 'no refused record made the reader fetch its layer')
  const metrics = await (await fetch(`http://127.0.0.1:${reader.metricsPort!}/metrics`)).text()
  for (const [reason, n] of [['unsigned', 1], ['untrusted-signer', 1], ['bad-signature', 2], ['wrong-scope', 1], ['old-epoch', 1], ['version', 1]] as const) {
    assert.match(metrics, new RegExp(`^strata_records_rejected_total\\{reason="${reason}"\\} ${n}$`, 'm'), reason)
  }
  // A good record from the trusted writer still resolves.
  const { key } = await publishLayer(t, writer, { ok: 'fine' }, { scope: 'main' })
  assert.equal((await reader.resolve(key)).record.producer, writer.peerId)
})

test('a reader uses its read scopes in order: its own branch first, then main', async (t) => {
  const writer = await startDaemon(t)
  const writers = `${tempDir(t)}/writers`
  writeFileSync(writers, `# who may write\n${Buffer.from((await loadIdentity(writer.dataDir)).publicKey).toString('hex')}\n`)
  const reader = await startDaemon(t, { trustedWritersFile: writers })
  assert.deepEqual((await reader.status({ copies: false })).trustedWriters, [writer.peerId])
  await connect([writer, reader])
  const key = freshKey('scoped')
  const onMain = await publishLayer(t, writer, { f: 'built on main' }, { key, scope: 'main' })
  const onPr = await publishLayer(t, writer, { f: 'built on pr/123' }, { key, scope: 'pr/123' })
  assert.notEqual(onMain.layer.root.toString(), onPr.layer.root.toString())
  await writer.node.contentRouting.provide(key)
  const check = async (d: Daemon): Promise<void> => {
    const pr = await d.resolve(key, { scopes: ['pr/123', 'main'] })
    assert.equal(pr.record.scope, 'pr/123')
    assert.equal(pr.layer.root.toString(), onPr.layer.root.toString())
    const other = await d.resolve(key, { scopes: ['pr/7', 'main'] })
    assert.equal(other.record.scope, 'main', 'a branch with no record of its own falls back to main')
    assert.equal(other.layer.root.toString(), onMain.layer.root.toString())
    await assert.rejects(d.resolve(key, { scopes: ['pr/7'] }), RecordNotFoundError)
  }
  // The reader learned both records by gossip: the order holds in its own store.
  const deadline = Date.now() + 10_000
  while (await reader.store.getRecord(recordKey(key, 'pr/123')) === undefined || await reader.store.getRecord(recordKey(key, 'main')) === undefined) {
    if (Date.now() > deadline) throw new Error('the records did not arrive by gossip')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await check(reader)
  // A reader that joins later has only the DHT: the order holds there too.
  // (Without the replay of recent records on connecting, which would hand it both.)
  const late = await startDaemon(t, { trustedWriters: [writer.peerId], recentRecords: 0 })
  await connect([writer, late])
  assert.equal(await late.store.getRecord(recordKey(key, 'main')), undefined)
  await check(late)
})

test('a node without writer trust may read, but its records are ignored by others', async (t) => {
  const writer = await startDaemon(t)
  const guest = await startDaemon(t, { trustedWriters: [writer.peerId] })
  const reader = await startDaemon(t, { trustedWriters: [writer.peerId] })
  await connect([writer, guest, reader])
  const { key } = await publishLayer(t, writer, { f: 'trusted' })
  assert.equal((await guest.resolve(key)).record.producer, writer.peerId, 'the guest reads the fleet\'s records')
  const own = await publishLayer(t, guest, { f: 'guest' })
  await assert.rejects(reader.resolve(own.key), (err: Error) => err instanceof RecordNotFoundError && /untrusted-signer/.test(err.reason))
  assert.ok((reader.rejected['untrusted-signer'] ?? 0) >= 1)
  assert.equal(await reader.store.has(own.layer.root), false)

  // A writer trusted for pull-request scopes only: its pr/9 record counts, its main record does not.
  const prReader = await startDaemon(t, { trustedWriters: [writer.peerId, `${guest.peerId}@pr/*`] })
  await connect([writer, guest, reader, prReader])
  const prKey = freshKey('pr-writer')
  await publishLayer(t, guest, { f: 'pr build' }, { key: prKey, scope: 'pr/9' })
  const onMain = await publishLayer(t, guest, { f: 'claims main' }, { key: prKey, scope: 'main' })
  await guest.node.contentRouting.provide(prKey)
  assert.equal((await prReader.resolve(prKey, { scopes: ['pr/9', 'main'] })).record.scope, 'pr/9')
  await assert.rejects(prReader.resolve(prKey, { scopes: ['main'] }), (err: Error) => err instanceof RecordNotFoundError && /not trusted to write scope main/.test(err.reason))
  assert.equal(await prReader.store.has(onMain.layer.root), false)
})

test('records signed by a writer key are hits wherever NAME-N:KEY@main is trusted, whatever VM wrote them', async (t) => {
  const { key: main1 } = generateWriterKey('ci-main-1')
  const { key: main2 } = generateWriterKey('ci-main-2')
  const mainVm = await startDaemon(t, { trustedWriters: [`${main1.id}@main`, `${main2.id}@main`] })
  const reader = await startDaemon(t, { trustedWriters: [`${main1.id}@main`] })
  const vmOnly = await startDaemon(t, { trustedWriters: [mainVm.peerId] })
  const prOnly = await startDaemon(t, { trustedWriters: [`${main1.id}@pr/*`] })
  const rotated = await startDaemon(t, { trustedWriters: [`${main2.id}@main`] })
  await connect([mainVm, reader, vmOnly, prOnly, rotated])
  const { key, layer } = await publishLayer(t, mainVm, { f: 'main build' }, { scope: 'main', writer: main1 })
  const hit = await reader.resolve(key, { scopes: ['main'] })
  assert.equal(hit.record.writer, main1.id)
  assert.equal(hit.record.producer, mainVm.peerId, 'the record still says where the layer is')
  assert.equal(await reader.store.has(layer.root), true)
  // Trusting the VM is not trusting the key it signed with; a key trusted for pr/* cannot write main; after a rotation the old key is out.
  for (const [who, d] of [['vm only', vmOnly], ['pr only', prOnly], ['rotated', rotated]] as const) {
    await assert.rejects(d.resolve(key, { scopes: ['main'] }), (err: Error) => err instanceof RecordNotFoundError && /untrusted-signer/.test(err.reason), who)
    assert.ok((d.rejected['untrusted-signer'] ?? 0) >= 1, who)
    assert.equal(await d.store.has(layer.root), false, who)
  }
  // The next generation's records are hits where it is trusted.
  const next = await publishLayer(t, mainVm, { f: 'main build, new key' }, { scope: 'main', writer: main2 })
  assert.equal((await rotated.resolve(next.key, { scopes: ['main'] })).record.writer, main2.id)
})

test('records announced by gossip are verified before they are stored, and refusals counted by reason', async (t) => {
  const writer = await startDaemon(t)
  const evil = await startDaemon(t)
  const reader = await startDaemon(t, { trustedWriters: [writer.peerId] })
  await connect([writer, evil, reader])
  const w = await loadIdentity(writer.dataDir)
  const e = await loadIdentity(evil.dataDir)
  const layer = freshKey('gossip-layer')
  const v1Key = freshKey('v1')
  const v1 = dagCbor.encode({ body: dagCbor.encode({ v: 1, key: v1Key, parent: null, layer, size: 1, env: [], created: 1, producer: w.peerId }), sig: new Uint8Array(64) })
  const foreignKey = freshKey('foreign')
  const foreign = signRecord(recordFor(e, foreignKey, layer, { epoch: 0 }), e)
  for (const bytes of [v1, foreign]) await evil.node.services.pubsub.publish('/strata/records/1', bytes)
  const deadline = Date.now() + 10_000
  while ((reader.rejected.version ?? 0) < 1 || (reader.rejected['untrusted-signer'] ?? 0) < 1) {
    if (Date.now() > deadline) throw new Error(`refusals seen: ${JSON.stringify(reader.rejected)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.equal(await reader.store.getRecord(recordKey(foreignKey, 'main')), undefined)
  assert.equal(await reader.store.getRecord(recordKey(v1Key, 'main')), undefined)
  assert.equal(reader.counters.recordsLearned, 0)
})
