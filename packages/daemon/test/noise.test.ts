import assert from 'node:assert/strict'
import { test } from 'node:test'
import { noise, pureJsCrypto } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { createLibp2p } from 'libp2p'
import { digestTree } from '@strata/testing'
import { BLOCKS_PROTOCOL, decodeMessage, encodeWant, MAX_MESSAGE_SIZE } from '../src/index.ts'
import { noiseCrypto } from '../src/noise-crypto.ts'
import { bytes, connect, publishLayer, startDaemon } from './helpers.ts'

test('the daemon\'s Noise crypto talks to the library\'s own: a plain libp2p node fetches a large block from a daemon', async (t) => {
  const d = await startDaemon(t)
  const content = bytes('noise-interop', 200_000)
  const { layer } = await publishLayer(t, d, { 'f.bin': content })
  const node = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()]
  })
  t.after(async () => { await node.stop() })
  const stream = await node.dialProtocol(d.node.getMultiaddrs()[0]!, BLOCKS_PROTOCOL)
  const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_SIZE })
  const [chunk] = await (async () => { for await (const e of d.store.entries(layer.root)) return e.chunks ?? [] })() ?? []
  assert.ok(chunk !== undefined)
  // The want-list goes out sealed by the library, the block (several Noise messages) comes back sealed by the daemon.
  await lp.write(encodeWant([chunk.cid]))
  const msg = decodeMessage((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray())
  assert.equal(msg.type, 'block')
  assert.ok(msg.type === 'block' && msg.bytes.length === chunk.length && chunk.length > 65_536)
  assert.deepEqual(Buffer.from(msg.type === 'block' ? msg.bytes : []), Buffer.from(content.subarray(0, chunk.length)))
  await stream.close()
})

test('noiseCrypto and the library\'s crypto open each other\'s sealed messages, and refuse a tampered one', () => {
  const k = Uint8Array.from({ length: 32 }, (_, i) => i)
  const nonce = new Uint8Array(12)
  nonce[4] = 7
  const ad = Buffer.from('ad')
  const plain = bytes('seal', 70_000)
  const sealed = Buffer.from(noiseCrypto.chaCha20Poly1305Encrypt(plain, nonce, ad, k).subarray())
  assert.equal(sealed.length, plain.length + 16)
  assert.deepEqual(sealed, Buffer.from(pureJsCrypto.chaCha20Poly1305Encrypt(plain, nonce, ad, k).subarray()))
  assert.deepEqual(Buffer.from(pureJsCrypto.chaCha20Poly1305Decrypt(Uint8Array.from(sealed), nonce, ad, k).subarray()), Buffer.from(plain))
  assert.deepEqual(Buffer.from(noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, k).subarray()), Buffer.from(plain))
  sealed[100] = (sealed[100] ?? 0) ^ 1
  assert.throws(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, k))
})

test('two daemons with the daemon\'s Noise crypto restore a layer between them', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const { key, layer } = await publishLayer(t, a, { 'big.bin': bytes('noise-daemons', 2 * 1024 * 1024) })
  const got = await b.resolve(key)
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
})
