import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { describeChange, diffDescriptors, encodeDescriptor, decodeDescriptor, KEY_FORMAT } from '../src/index.ts'
import type { KeyDescriptor } from '../src/index.ts'
import { envValueDigest } from '../src/key.ts'

const base = { kind: 'host' as const, osRelease: new Uint8Array(32), arch: 'x86_64', id: null }
const desc = (over: Partial<KeyDescriptor> = {}): KeyDescriptor => ({
  v: KEY_FORMAT,
  parent: base,
  run: 'npm ci',
  cwd: '/work/app',
  user: '0:0',
  env: [['NODE_ENV', envValueDigest('production')]],
  inputs: [{ path: '/work/app/package.json', type: 'file', exec: false, digest: new Uint8Array(32).fill(1) }],
  platform: { os: 'linux', arch: 'x86_64' },
  salt: null,
  ...over
})

test('the key is the sha2-256 dag-cbor CID of the descriptor, stable and round-tripping', async () => {
  const a = await encodeDescriptor(desc())
  const b = await encodeDescriptor(desc())
  assert.ok(a.key.equals(b.key))
  assert.equal(a.key.version, 1)
  assert.equal(a.key.code, dagCbor.code)
  assert.equal(a.key.multihash.code, 0x12)
  assert.deepEqual(await decodeDescriptor(a.key, a.bytes), desc())
  const other = await encodeDescriptor(desc({ salt: '1' }))
  assert.ok(!other.key.equals(a.key))
  assert.equal(await decodeDescriptor(other.key, a.bytes), undefined, 'bytes that do not hash to the key are refused')
})

test('diff names each changed field', async () => {
  const parent = (await encodeDescriptor(desc())).key
  const before = desc({ parent })
  const after = desc({
    parent: CID.parse('bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm'),
    run: 'npm install',
    env: [['CI', null], ['NODE_ENV', envValueDigest('development')]],
    inputs: [{ path: '/work/app/package.json', type: 'file', exec: true, digest: new Uint8Array(32).fill(1) }, { path: '/work/app/.npmrc', type: 'file', exec: false, digest: new Uint8Array(32) }],
    salt: '2'
  })
  const changes = diffDescriptors(before, after)
  assert.deepEqual(changes.map((c) => c.field), ['parent', 'run', 'env', 'env', 'input', 'input', 'salt'])
  assert.deepEqual(changes.map(describeChange).slice(2, 6), [
    'env NODE_ENV has another value',
    'env CI was added',
    'input /work/app/package.json changed its execute bit',
    'input /work/app/.npmrc is new'
  ])
  assert.deepEqual(diffDescriptors(before, before), [])
  const baseChange = diffDescriptors(desc(), desc({ parent: { ...base, id: 'ami-2' } }))
  assert.deepEqual(baseChange, [{ field: 'base', detail: 'base-id', before: 'null', after: 'ami-2' }])
})
