import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import type { TestContext } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import type { CID } from 'multiformats/cid'
import { cidOf, DAG_CBOR } from '@strata/chunker'
import { loadIdentity, RECORD_FORMAT, recordKey, signRecord } from '@strata/records'
import type { WriterKey } from '@strata/records'
import type { LayerInfo } from '@strata/store'
import { tempDir, writeTree } from '@strata/testing'
import type { PlainTree } from '@strata/testing'
import { createDaemon } from '../src/index.ts'
import type { Daemon, DaemonInit } from '../src/index.ts'

/** Writes `tree` with fixed times, so that the same tree gives the same layer on every node. */
export function writeFixedTree (dir: string, tree: PlainTree): void {
  writeTree(dir, tree, { mtime: 1_000_000 })
}

/** Seeded pseudo-random bytes: the same seed gives the same content on every node. */
export function bytes (seed: string, n: number): Uint8Array {
  const key = createHash('sha256').update(seed).digest()
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n))
}

/** A started daemon on 127.0.0.1 with an ephemeral port and its own data dir, stopped after the test. */
export async function startDaemon (t: TestContext, init: Partial<DaemonInit> = {}): Promise<Daemon> {
  const dataDir = init.dataDir ?? tempDir(t)
  const daemon = await createDaemon({ listen: ['/ip4/127.0.0.1/tcp/0'], replicas: 0, providerTimeoutMs: 2000, ...init, dataDir })
  t.after(async () => { await daemon.stop() })
  await daemon.start()
  return daemon
}

/** Connects every daemon to the first, then waits until each sees the others' DHT and gossip. */
export async function connect (daemons: Daemon[]): Promise<void> {
  const [first, ...rest] = daemons
  // Every daemon here is one host (127.0.0.1), and a node refuses a host's connections
  // past NODE_LIMITS.inboundConnectionsPerSecond: a larger fleet dials at that pace.
  const pace = async (): Promise<void> => { if (daemons.length > 4) await new Promise((resolve) => setTimeout(resolve, 250)) }
  for (const d of rest) {
    await d.node.dial(first!.node.getMultiaddrs()[0]!)
    await pace()
  }
  for (let i = 1; i < rest.length; i++) {
    await rest[i]!.node.dial(rest[0]!.node.getMultiaddrs()[0]!)
    await pace()
  }
  const deadline = Date.now() + 10_000
  for (const d of daemons) {
    while (d.node.services.pubsub.getSubscribers('/strata/records/1').length < daemons.length - 1 ||
      (d.node.services.dht as unknown as { routingTable: { size: number } }).routingTable.size < daemons.length - 1) {
      if (Date.now() > deadline) throw new Error('peers did not see each other')
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
}

/** Commits `tree` on `daemon` as a layer and signs, stores and announces a record for `key` (default a fresh one) in `scope` (default `default`). */
export async function publishLayer (t: TestContext, daemon: Daemon, tree: PlainTree, opts: { key?: CID, scope?: string, epoch?: number, writer?: WriterKey } = {}): Promise<{ key: CID, layer: LayerInfo }> {
  const dir = `${tempDir(t)}/upper`
  writeFixedTree(dir, tree)
  const layer = await daemon.commit(dir)
  const key = opts.key ?? cidOf(DAG_CBOR, dagCbor.encode({ test: randomBytes(16) }))
  const scope = opts.scope ?? 'default'
  const identity = await loadIdentity(daemon.dataDir)
  const envelope = signRecord({
    v: RECORD_FORMAT, key, parent: null, layer: layer.root, size: layer.size, env: [], created: Date.now(), producer: identity.peerId, scope, epoch: opts.epoch ?? daemon.trust.epoch, writer: opts.writer?.id ?? null
  }, opts.writer ?? identity)
  await daemon.putRecord(recordKey(key, scope), envelope)
  return { key, layer }
}

/** `store` with some methods replaced (the store's methods need their own `this`, so each is bound). */
export function wrapStore<T extends object> (store: T, overrides: Partial<T>): T {
  const out: Record<string, unknown> = {}
  let proto: object | null = store
  while (proto !== null && proto !== Object.prototype) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name in out) continue
      const v = (store as Record<string, unknown>)[name]
      out[name] = typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(store) : v
    }
    proto = Object.getPrototypeOf(proto) as object | null
  }
  return Object.assign(out, overrides) as T
}

/** An unsigned varint, as a length prefix on the wire: for frames made by hand. */
export function varint (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}

/**
 * A runner-like process, run with `node --input-type=module -e CLAIMANT_SCRIPT DATA_DIR KEY`
 * from the repo: it claims KEY through the daemon on DATA_DIR, prints the claim's status,
 * and holds the claim until killed.
 */
export const CLAIMANT_SCRIPT = [
  "import { connectDaemon } from '@strata/daemon/client'",
  'const c = await connectDaemon(process.argv[1])',
  "const claim = await c.claim(process.argv[2], { scope: 'default' })",
  "process.stdout.write(claim.status + '\\n')",
  'setInterval(() => {}, 1000)'
].join('\n')
