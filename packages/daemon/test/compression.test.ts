import assert from 'node:assert/strict'
import { test } from 'node:test'
import { zstdCompressSync } from 'node:zlib'
import { BLOCKS_PROTOCOL, BLOCKS_PROTOCOL_ZSTD } from '../src/index.ts'
import type { Daemon } from '../src/index.ts'
import { DecompressionLimitError, StreamDecompressor } from '../src/compression.ts'
import { digestTree } from '@strata/testing'
import type { PlainTree as Tree } from '@strata/testing'
import { bytes, connect, publishLayer, startDaemon } from './helpers.ts'

/** Text-like files above the inline size, alike but not equal, plus one multi-block file: what compresses as node_modules does. */
function compressibleTree (seed: string): Tree {
  const tree: Tree = {}
  for (let i = 0; i < 40; i++) {
    const lines = Array.from({ length: 200 }, (_, j) => `export function ${seed}${i}_${j} (a, b) { return a + b * ${j} } // module ${i}\n`)
    tree[`m${i}.js`] = lines.join('')
  }
  tree['big.js'] = Array.from({ length: 20_000 }, (_, j) => `const v${j} = require('./m${j % 40}.js')\n`).join('')
  tree['random.bin'] = bytes(seed, 200_000)
  return tree
}

async function fetchFrom (t: Parameters<typeof startDaemon>[0], from: Daemon, to: Daemon, tree: Tree): Promise<void> {
  const { key, layer } = await publishLayer(t, from, tree)
  const got = await to.resolve(key, { hints: [from.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path), 'the restored tree is byte-identical')
}

test('new daemons exchange blocks compressed: the restore is byte-identical and fewer bytes cross', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  await fetchFrom(t, a, b, compressibleTree('z'))
  const c = b.exchange.counters
  assert.ok(c.bytesFromPeers > 1_000_000)
  assert.ok(c.wireBytesFromPeers < c.bytesFromPeers / 2, `${c.wireBytesFromPeers} bytes on the wire for ${c.bytesFromPeers} of blocks`)
  assert.equal(a.exchange.counters.wireBytesToPeers, c.wireBytesFromPeers, 'what one side sent is what the other read')
  const stream = await b.node.dialProtocol(a.node.peerId, [BLOCKS_PROTOCOL_ZSTD, BLOCKS_PROTOCOL])
  assert.equal(stream.protocol, BLOCKS_PROTOCOL_ZSTD)
  stream.abort(new Error('probe'))
})

test('a new daemon and one that speaks only 1.0.0 exchange blocks uncompressed, in both directions', async (t) => {
  const fresh = await startDaemon(t)
  const old = await startDaemon(t, { exchange: { compress: false } })
  await connect([fresh, old])
  // The new side fetches from the old one: its offer of 1.1.0 is declined.
  await fetchFrom(t, old, fresh, compressibleTree('old-serves'))
  assert.ok(fresh.exchange.counters.wireBytesFromPeers >= fresh.exchange.counters.bytesFromPeers)
  // The old side fetches from the new one, which answers 1.0.0 as it always did.
  await fetchFrom(t, fresh, old, compressibleTree('new-serves'))
  assert.ok(old.exchange.counters.wireBytesFromPeers >= old.exchange.counters.bytesFromPeers)
  assert.ok(fresh.exchange.counters.wireBytesToPeers >= fresh.exchange.counters.bytesToPeers)
  const stream = await fresh.node.dialProtocol(old.node.peerId, [BLOCKS_PROTOCOL_ZSTD, BLOCKS_PROTOCOL])
  assert.equal(stream.protocol, BLOCKS_PROTOCOL)
  stream.abort(new Error('probe'))
})

test('decompression stops at the allowance: a bomb is refused after at most one piece past it', async () => {
  // 256 MiB of zeros in a few KiB.
  const bomb = zstdCompressSync(Buffer.alloc(256 * 1024 * 1024))
  assert.ok(bomb.length < 100_000)
  const allowance = 2 * 1024 * 1024
  let plain = 0
  const failed = Promise.withResolvers<Error>()
  const z = new StreamDecompressor({
    allowance: () => allowance,
    maxInput: 16 * 1024 * 1024,
    onPlain: (b) => { plain += b.length },
    onError: failed.resolve,
    onEnd: () => failed.reject(new Error('the bomb was decompressed to its end'))
  })
  z.push(bomb)
  const err = await failed.promise
  assert.ok(err instanceof DecompressionLimitError, String(err))
  assert.equal(err.code, 'ERR_DECOMPRESSION_LIMIT')
  assert.ok(plain <= allowance, `${plain} bytes handed over`)
  assert.ok(z.plainBytes <= allowance + 256 * 1024, `${z.plainBytes} bytes decompressed`)
})

test('a provider that sends a compression bomb is banned and the fetch completes from another', async (t) => {
  const a = await startDaemon(t)
  const evil = await startDaemon(t)
  await evil.exchange.stop()
  const bomb = zstdCompressSync(Buffer.alloc(256 * 1024 * 1024))
  // Answers the first want-list with a stream that expands to 256 MiB.
  await evil.node.handle(BLOCKS_PROTOCOL_ZSTD, (stream) => {
    stream.addEventListener('message', () => { stream.send(bomb) }, { once: true })
  })
  const b = await startDaemon(t, { exchange: { wantBatch: 1, streamsPerProvider: 1 } })
  await connect([a, evil, b])
  const tree = compressibleTree('bomb')
  const { key, layer } = await publishLayer(t, a, tree)
  // The bomb-sender claims to provide the layer, and is asked first.
  const got = await b.resolve(key, { hints: [evil.node.peerId] })
  assert.deepEqual(digestTree(got.layer.path), digestTree(layer.path))
  assert.ok(b.exchange.isBanned(evil.node.peerId), 'the bomb-sender is banned')
  assert.ok(!b.exchange.isBanned(a.node.peerId))
})
