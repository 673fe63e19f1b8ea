import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { describeChange, diffDescriptors, encodeDescriptor, decodeDescriptor, KEY_FORMAT } from '../src/index.ts'
import type { KeyDescriptor } from '../src/index.ts'
import { createHash, createHmac } from 'node:crypto'
import { digestKey, envValueDigest, inputDigest, UNSALTED } from '../src/key.ts'

const base = { kind: 'host' as const, osRelease: new Uint8Array(32), arch: 'x86_64', id: null }
const desc = (over: Partial<KeyDescriptor> = {}): KeyDescriptor => ({
  v: KEY_FORMAT,
  below: { base, layers: [], env: null },
  run: 'npm ci',
  cwd: '/work/app',
  user: '0:0',
  env: [['NODE_ENV', envValueDigest('production')]],
  inputs: [{ path: '/work/app/package.json', type: 'file', exec: false, digest: new Uint8Array(32).fill(1) }],
  workspace: { path: '/workspace', digest: new Uint8Array(32).fill(2), files: 3 },
  platform: { os: 'linux', arch: 'x86_64' },
  salt: null,
  ...over
} as KeyDescriptor)

test('the key is the sha2-256 dag-cbor CID of the descriptor, stable and round-tripping', async () => {
  const a = await encodeDescriptor(desc())
  const b = await encodeDescriptor(desc())
  assert.ok(a.key.equals(b.key))
  assert.equal(a.key.version, 1)
  assert.equal(a.key.code, dagCbor.code)
  assert.equal(a.key.multihash.code, 0x12)
  assert.deepEqual(await decodeDescriptor(a.key, a.bytes), desc())
  const other = await encodeDescriptor(desc({ salt: digestKey('1').id }))
  assert.ok(!other.key.equals(a.key))
  assert.equal(await decodeDescriptor(other.key, a.bytes), undefined, 'bytes that do not hash to the key are refused')
})

test('diff names each changed field', async () => {
  const layer = (await encodeDescriptor(desc())).key
  const before = desc({ below: { base, layers: [layer], env: null } })
  const after = desc({
    below: { base, layers: [CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm')], env: null },
    run: 'npm install',
    env: [['CI', null], ['NODE_ENV', envValueDigest('development')]],
    inputs: [{ path: '/work/app/package.json', type: 'file', exec: true, digest: new Uint8Array(32).fill(1) }, { path: '/work/app/.npmrc', type: 'file', exec: false, digest: new Uint8Array(32) }],
    salt: digestKey('2').id
  })
  const changes = diffDescriptors(before, after)
  assert.deepEqual(changes.map((c) => c.field), ['layers', 'run', 'env', 'env', 'input', 'input', 'salt'])
  assert.deepEqual(changes.map(describeChange).slice(2, 6), [
    'env NODE_ENV has another value',
    'env CI was added',
    'input /work/app/package.json changed its execute bit',
    'input /work/app/.npmrc is new'
  ])
  assert.deepEqual(diffDescriptors(before, before), [])
  assert.equal(describeChange(changes[0]!), 'the layers below changed (1 new, 1 gone)')
  const baseChange = diffDescriptors(desc(), desc({ below: { base: { ...base, id: 'ami-2' }, layers: [], env: null } }))
  assert.deepEqual(baseChange, [{ field: 'base', detail: 'base-id', before: 'null', after: 'ami-2' }])
})

test('a descriptor of another format is reported as that alone, not as every field it digests otherwise', () => {
  assert.deepEqual(diffDescriptors(desc({ v: 1, run: 'other' }), desc()), [{ field: 'format', before: 1, after: KEY_FORMAT }])
  assert.equal(describeChange({ field: 'format', before: 1, after: 2 }), 'the key format changed (v1 -> v2)')
})

test('input and env digests are keyed by the salts: not plain sha2-256, and not reproducible without the fleet salt', () => {
  const content = 'db-password=hunter2\n'
  const plain = createHash('sha256').update(content).digest()
  const digest = (key = UNSALTED): Buffer => inputDigest(key).update(content).digest()
  // Unsalted: a public constant key, which keeps the digest from matching published sha2-256 lists, nothing more.
  assert.notDeepEqual(digest(), plain)
  assert.deepEqual(digest(), createHmac('sha256', UNSALTED.key).update('strata/input/v2\0').update(content).digest())
  const fleet = digestKey('v1', 'fleet-secret-3f9a')
  const guessed = [digestKey('v1'), digestKey('v1', 'fleet-secret-3f9b'), digestKey(null, 'fleet-secret-3f9a'), UNSALTED]
  for (const k of guessed) assert.notDeepEqual(digest(k), digest(fleet), 'a reader without the exact salts cannot confirm the content')
  assert.deepEqual(digest(digestKey('v1', 'fleet-secret-3f9a')), digest(fleet), 'every VM with the same salts gets the same digest: keys stay shared')
  assert.notDeepEqual(Buffer.from(envValueDigest(content, fleet)), Buffer.from(envValueDigest(content)))
  assert.notDeepEqual(Buffer.from(envValueDigest(content, fleet)), digest(fleet), 'env values and file contents are digested apart')
  // The salts are length-prefixed: moving a character from one to the other is another key.
  assert.notDeepEqual(Buffer.from(digestKey('ab', 'c').key), Buffer.from(digestKey('a', 'bc').key))
  assert.notDeepEqual(Buffer.from(digestKey('', null).key), Buffer.from(digestKey(null, null).key))
  // What the descriptor records: nothing without salts, else a digest that is not the key itself.
  assert.equal(UNSALTED.id, null)
  assert.ok(fleet.id !== null && !Buffer.from(fleet.id).equals(Buffer.from(fleet.key)))
})
