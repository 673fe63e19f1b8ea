import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { test } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { CID } from 'multiformats/cid'
import {
  RECORD_FORMAT, RecordInvalidError, TrustPolicy, generateWriterKey, loadIdentity, loadWriterKey, openRecord, parseWriterId,
  signRecord, signedBytes, signerOf, splitWriterKeyName
} from '../src/index.ts'
import type { Identity, StepRecord, WriterKey } from '../src/index.ts'
import { tempDir } from '@strata/testing'

const KEY = CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')
const LAYER = CID.parse('bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q')

function recordBy (node: Identity, writer: WriterKey | null, over: Partial<StepRecord> = {}): StepRecord {
  return { v: RECORD_FORMAT, key: KEY, parent: null, layer: LAYER, size: 5, env: [], created: 1, producer: node.peerId, scope: 'main', epoch: 0, writer: writer?.id ?? null, ...over }
}

const refusedFor = (reason: string) => (err: unknown): boolean => err instanceof RecordInvalidError && err.reason === reason

test('a writer key file is NAME-N:BASE64(seed || public key), its public part NAME-N:BASE64(public key)', async (t) => {
  const { key, secret } = generateWriterKey('ci-main-1')
  assert.match(secret, /^ci-main-1:[A-Za-z0-9+/]{86}==\n$/)
  assert.match(key.id, /^ci-main-1:[A-Za-z0-9+/]{43}=$/)
  const file = `${tempDir(t)}/ci-main-1.key`
  writeFileSync(file, secret, { mode: 0o600 })
  const loaded = await loadWriterKey(file)
  assert.equal(loaded.id, key.id)
  assert.deepEqual(parseWriterId(key.id)?.publicKey, key.publicKey)
  const data = Buffer.from('x')
  assert.deepEqual(loaded.sign(data), key.sign(data), 'ed25519 is deterministic: the same key signs the same')
  assert.deepEqual(splitWriterKeyName('ci-main-12'), { base: 'ci-main', generation: 12 })
  for (const bad of ['ci-main', 'ci-main-0', 'ci main-1', '-1', `${'x'.repeat(65)}-1`]) assert.throws(() => generateWriterKey(bad), TypeError, bad)
})

test('a bad writer key file is a WriterKeyError naming the file', async (t) => {
  const dir = tempDir(t)
  const { secret } = generateWriterKey('ci-main-1')
  const cases: Array<[string, RegExp]> = [
    ['ci-main-1', /one line NAME-N:BASE64/],
    ['ci-main:' + secret.split(':')[1]!, /one line NAME-N:BASE64/],
    ['ci-main-1:AAAA', /64 bytes in base64/],
    // The public half of another key: it does not match the seed.
    [`ci-main-1:${Buffer.concat([Buffer.from(secret.split(':')[1]!, 'base64').subarray(0, 32), Buffer.alloc(32)]).toString('base64')}`, /does not match its seed/],
    ['x'.repeat(2000), /2000 bytes/]
  ]
  for (const [text, message] of cases) {
    const file = `${dir}/k`
    writeFileSync(file, text)
    await assert.rejects(loadWriterKey(file), (err: Error & { code?: string, path?: string }) => {
      assert.equal(err.name, 'WriterKeyError')
      assert.equal(err.code, 'ERR_WRITER_KEY')
      assert.equal(err.path, file)
      assert.match(err.message, message)
      assert.ok(err.message.startsWith(`${file}: `))
      return true
    })
  }
  await assert.rejects(loadWriterKey(`${dir}/absent`), { code: 'ERR_WRITER_KEY', message: /cannot read it/ })
})

test('a record signed by a writer key names it, and is trusted where NAME-N:KEY is, in the scopes its pattern allows', async (t) => {
  const vm = await loadIdentity(tempDir(t))
  const { key: main1 } = generateWriterKey('ci-main-1')
  const bytes = signRecord(recordBy(vm, main1), main1)
  const body = dagCbor.decode<StepRecord>(dagCbor.decode<{ body: Uint8Array }>(bytes).body)
  assert.equal(body.writer, main1.id)
  assert.equal(body.producer, vm.peerId, 'the producer stays: it is where the layer is')
  assert.equal(signerOf(body), main1.id)

  // Another data dir, any VM: it trusts the key, not the VM.
  const reader = new TrustPolicy('12D3KooWreader', [`${main1.id}@main`])
  assert.equal(openRecord(KEY, bytes, reader.reading(['main'])).writer, main1.id)
  assert.throws(() => openRecord(KEY, bytes, new TrustPolicy('12D3KooWreader', [vm.peerId]).reading(['main'])), refusedFor('untrusted-signer'), 'trusting the VM is not trusting its writer key')
  assert.throws(() => openRecord(KEY, bytes, new TrustPolicy('12D3KooWreader', []).reading(['main'])), refusedFor('untrusted-signer'))
  const prOnly = new TrustPolicy('12D3KooWreader', [`${main1.id}@pr/*`])
  assert.throws(() => openRecord(KEY, bytes, prOnly.reading(['main'])), (err: unknown) => refusedFor('untrusted-signer')(err) && /not trusted to write scope main/.test((err as Error).message))
  assert.equal(openRecord(KEY, signRecord(recordBy(vm, main1, { scope: 'pr/4' }), main1), prOnly.reading(['pr/4'])).scope, 'pr/4')
  // Same name, another key: not the trusted writer.
  const { key: impostor } = generateWriterKey('ci-main-1')
  assert.throws(() => openRecord(KEY, signRecord(recordBy(vm, impostor), impostor), reader.reading(['main'])), refusedFor('untrusted-signer'))
  // The signature does not carry over to another writer, nor to the record without one.
  const { sig } = dagCbor.decode<{ sig: Uint8Array }>(bytes)
  const reSigned = (b: StepRecord): Uint8Array => dagCbor.encode({ body: dagCbor.encode(b), sig })
  const anyone = new TrustPolicy('12D3KooWreader', undefined)
  assert.throws(() => openRecord(KEY, reSigned({ ...body, writer: impostor.id }), anyone), refusedFor('bad-signature'))
  assert.throws(() => openRecord(KEY, reSigned({ ...body, writer: null }), anyone), refusedFor('bad-signature'))
  assert.throws(() => openRecord(KEY, reSigned({ ...body, producer: '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf' }), anyone), refusedFor('bad-signature'))
})

test('rotation: with NAME-2 trusted and NAME-1 not, records of NAME-1 are refused', async (t) => {
  const vm = await loadIdentity(tempDir(t))
  const { key: one } = generateWriterKey('ci-main-1')
  const { key: two } = generateWriterKey('ci-main-2')
  const after = new TrustPolicy('12D3KooWreader', [`${two.id}@main`]).reading(['main'])
  assert.throws(() => openRecord(KEY, signRecord(recordBy(vm, one), one), after), refusedFor('untrusted-signer'))
  assert.equal(openRecord(KEY, signRecord(recordBy(vm, two), two), after).writer, two.id)
})

test('without a writer key a record is signed by the node identity and trusted only where its peer id is', async (t) => {
  const vm = await loadIdentity(tempDir(t))
  const bytes = signRecord(recordBy(vm, null), vm)
  assert.equal(openRecord(KEY, bytes, new TrustPolicy('12D3KooWreader', [vm.peerId]).reading(['main'])).writer, null)
  assert.throws(() => openRecord(KEY, bytes, new TrustPolicy('12D3KooWreader', []).reading(['main'])), refusedFor('untrusted-signer'))
  const { key } = generateWriterKey('ci-main-1')
  assert.throws(() => signRecord(recordBy(vm, key), vm), TypeError, 'the identity cannot sign a record naming a writer key')
  assert.throws(() => signRecord(recordBy(vm, null), key), TypeError, 'a writer key signs only records that name it')
})

test('format 2 records (identity-signed, domain v2) are still read; format 1 is refused', async (t) => {
  const vm = await loadIdentity(tempDir(t))
  const v2 = { v: 2, key: KEY, parent: null, layer: LAYER, size: 5, env: [], created: 1, producer: vm.peerId, scope: 'main', epoch: 0 }
  const body = dagCbor.encode(v2)
  assert.deepEqual(Buffer.from(signedBytes(body, 2)).subarray(0, 17).toString(), 'strata/record/v2\n')
  const envelope = dagCbor.encode({ body, sig: vm.sign(signedBytes(body, 2)) })
  const got = openRecord(KEY, envelope, new TrustPolicy('12D3KooWreader', [vm.peerId]).reading(['main']))
  assert.equal(got.writer, null)
  assert.equal(got.v, 2)
  assert.throws(() => openRecord(KEY, envelope, new TrustPolicy('12D3KooWreader', []).reading(['main'])), refusedFor('untrusted-signer'))
  // A format 2 body signed under the format 3 domain is not a valid format 2 record.
  assert.throws(() => openRecord(KEY, dagCbor.encode({ body, sig: vm.sign(signedBytes(body, 3)) }), new TrustPolicy('x', undefined)), refusedFor('bad-signature'))
  // A writer field in a format 2 body is ignored: the producer must have signed it.
  const { key } = generateWriterKey('ci-main-1')
  const sneaky = dagCbor.encode({ ...v2, writer: key.id })
  assert.throws(() => openRecord(KEY, dagCbor.encode({ body: sneaky, sig: key.sign(signedBytes(sneaky, 2)) }), new TrustPolicy('x', undefined)), refusedFor('bad-signature'))
  const v1 = dagCbor.encode({ v: 1, key: KEY, parent: null, layer: LAYER, size: 5, env: [], created: 1, producer: vm.peerId })
  assert.throws(() => openRecord(KEY, dagCbor.encode({ body: v1, sig: vm.sign(v1) }), new TrustPolicy('x', undefined)), refusedFor('version'))
})

test('the record decoder on writer-signed records: random, mutated and forged envelopes give only typed refusals', async (t) => {
  const vm = await loadIdentity(tempDir(t))
  const { key } = generateWriterKey('ci-main-1')
  const good = signRecord(recordBy(vm, key), key)
  const policy = new TrustPolicy('12D3KooWreader', [`${key.id}@main`])
  const body = recordBy(vm, key)
  const writer = fc.oneof(fc.constant(key.id), fc.constant(null), fc.string({ maxLength: 60 }), fc.integer(), fc.uint8Array({ maxLength: 40 }),
    fc.tuple(fc.stringMatching(/^[a-z]{1,8}-[1-9]$/), fc.uint8Array({ minLength: 32, maxLength: 32 })).map(([n, k]) => `${n}:${Buffer.from(k).toString('base64')}`))
  const mutated = fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.option(fc.nat(), { nil: undefined })).map(([flips, cut]) => {
    const out = Buffer.from(good)
    for (const [at, v] of flips) out[at % out.length] = v
    return cut !== undefined ? out.subarray(0, cut % (out.length + 1)) : out
  })
  const forged = fc.tuple(writer, fc.constantFrom(2, 3, 4), fc.uint8Array({ minLength: 0, maxLength: 64 }), fc.boolean()).map(([w, v, sig, sign]) => {
    const b = dagCbor.encode({ ...body, v, writer: w })
    return dagCbor.encode({ body: b, sig: sign ? key.sign(signedBytes(b, v)) : sig })
  })
  fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 512 }), mutated, forged), (bytes) => {
    let record: StepRecord
    try {
      record = openRecord(KEY, bytes, policy.reading(['main']))
    } catch (err) {
      if (err instanceof RecordInvalidError) return
      throw new Error(`untyped error: ${String(err)}`, { cause: err })
    }
    // Whatever opens is signed by the trusted writer key, over exactly these bytes.
    assert.equal(record.writer, key.id)
    assert.equal(record.scope, 'main')
  }), { numRuns: Number(process.env.FUZZ_RUNS ?? 0) || 500 })
})
