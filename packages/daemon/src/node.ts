import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import type { GossipSub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { kadDHT, removePublicAddressesMapper } from '@libp2p/kad-dht'
import type { KadDHT } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { preSharedKey } from '@libp2p/pnet'
import { ping } from '@libp2p/ping'
import type { Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { ClassicLevel } from 'classic-level'
import { IDENTITY_FILE, IdentityError, loadIdentity } from '@strata/records'
import { BoundedDhtStore, MAX_DHT_RECORDS, MAX_PROVIDER_RECORDS, MAX_PROVIDER_RECORDS_PER_PEER } from './dht-store.ts'
import { ListenError } from './errors.ts'
import { noiseCrypto } from './noise-crypto.ts'

export type StrataServices = { dht: KadDHT, pubsub: GossipSub, identify: Identify, ping: Ping }
export type StrataNode = Libp2p<StrataServices>

/** Protocol prefix of every libp2p service strata runs, so that a strata fleet is its own DHT. */
export const PROTOCOL_PREFIX = '/strata'

/**
 * What one peer, or the network, may hold of this node at most (doc/LIMITS.md).
 * Streams are counted per connection by libp2p; with `connectionsPerPeer` that
 * bounds them per peer too.
 */
export const NODE_LIMITS = {
  /** Open connections; past this libp2p prunes the least useful. */
  connections: 256,
  /** Connections one peer may have open to us at once; more are refused after the handshake. */
  connectionsPerPeer: 4,
  /** Inbound connections still in their handshake (Noise, yamux). */
  pendingInboundConnections: 16,
  /** New connections per second from one host before the rest are refused. */
  inboundConnectionsPerSecond: 5,
  /** Milliseconds an inbound connection may take to finish its handshake (PSK, Noise, yamux). */
  handshakeMs: 10_000,
  /** Streams of any protocol the remote may have open on one connection (yamux). */
  streamsPerConnection: 256,
  /** Bytes a stream buffers unread before it is reset (yamux); one block frame is ~1 MiB. */
  streamReadBuffer: 4 * 1024 * 1024,
  /** DHT streams per connection, inbound / outbound. */
  dhtInboundStreams: 16,
  dhtOutboundStreams: 32,
  /** Largest gossipsub RPC frame accepted: a few records (each at most 256 KiB). */
  gossipMessageBytes: 1024 * 1024,
  /** Gossipsub streams per connection, each way. */
  gossipStreams: 4,
  /** DHT provider records kept in all, and per providing peer (`BoundedDhtStore`). */
  dhtProviderRecords: MAX_PROVIDER_RECORDS,
  dhtProviderRecordsPerPeer: MAX_PROVIDER_RECORDS_PER_PEER,
  /** Other DHT records (PUT_VALUE) kept. */
  dhtRecords: MAX_DHT_RECORDS
} as const

/** kad-dht's datastore prefix: a strata fleet's DHT keeps its records under it. */
const DHT_DATASTORE_PREFIX = '/dht-strata'
const dhtStores = new WeakMap<StrataNode, BoundedDhtStore>()

/** The bounded store of a node's DHT records (its counters and sizes, for status and tests). */
export function dhtStoreOf (node: StrataNode): BoundedDhtStore | undefined {
  return dhtStores.get(node)
}

export type NodeLimits = { -readonly [K in keyof typeof NODE_LIMITS]: number }

/**
 * The node's identity key (`<dataDir>/identity.key`, ed25519 PKCS#8 PEM, created
 * on first use, read once) as a libp2p private key: the daemon's peer id is the
 * runner's, so the records the runner signs are signed by the peer that serves them.
 * Throws IdentityError.
 */
export async function loadPrivateKey (dataDir: string, opts: { signal?: AbortSignal } = {}): Promise<PrivateKey> {
  const identity = await loadIdentity(dataDir, opts)
  try {
    const key = await generateKeyPairFromSeed('Ed25519', identity.seed())
    if (key.publicKey.toString() !== identity.peerId) throw new Error(`libp2p derives ${key.publicKey.toString()}, the runner ${identity.peerId}`)
    return key
  } catch (err) {
    throw new IdentityError(`${dataDir}/${IDENTITY_FILE}`, { cause: err })
  }
}

export interface NodeInit {
  /** Overrides of NODE_LIMITS (tests cross them with small values). */
  limits?: Partial<NodeLimits>
  privateKey: PrivateKey
  listen: string[]
  /** Find peers on the LAN by mDNS. Bootstrap addresses and DNS names are `Discovery`'s. */
  mdns: boolean
  /** Peer ids allowed to connect; undefined: any. */
  allowPeers?: readonly string[]
  /** A private network key (swarm.key bytes): every connection is wrapped in XSalsa20 under it before Noise. */
  psk?: Uint8Array
  /** Where the DHT's provider records are kept (a LevelDB directory, `<dataDir>/dht` for a daemon). */
  dhtDir: string
}

/**
 * The provider records' LevelDB: small caches, since a lookup reads one CID's records
 * once (and the store's index has caches of its own).
 */
const DHT_DB_OPTIONS = { cacheSize: 1 << 20, writeBufferSize: 1 << 20 }

/**
 * The TCP transport, its listen failures remembered by address: libp2p reports
 * them as one message with stacks and advice about its own configuration.
 */
function tcpRememberingFailures (failures: ListenError[]): ReturnType<typeof tcp> {
  const factory = tcp()
  return (components) => {
    const transport = factory(components)
    const createListener = transport.createListener.bind(transport)
    transport.createListener = (options) => {
      const listener = createListener(options)
      const listen = listener.listen.bind(listener)
      listener.listen = async (addr) => {
        try {
          await listen(addr)
        } catch (err) {
          failures.push(new ListenError(addr.toString(), { cause: err }))
          throw err
        }
      }
      return listener
    }
    return transport
  }
}

export async function createNode (init: NodeInit): Promise<StrataNode> {
  const listenFailures: ListenError[] = []
  const discovery = init.mdns ? [mdns({ serviceTag: 'strata.local' })] : []
  const allow = init.allowPeers !== undefined ? new Set(init.allowPeers) : undefined
  // The gater runs before the node exists; it looks at the node once there is one.
  const self: { node?: StrataNode } = {}
  const limits: NodeLimits = { ...NODE_LIMITS, ...init.limits }
  const tooMany = (p: PeerId): boolean => (self.node?.getConnections(p).length ?? 0) >= limits.connectionsPerPeer
  const dhtDb = new ClassicLevel<string, string>(init.dhtDir, { keyEncoding: 'utf8', valueEncoding: 'utf8', ...DHT_DB_OPTIONS })
  let node: StrataNode
  try {
    await dhtDb.open().catch((err: unknown) => { throw new Error(`cannot open the DHT's provider records at ${init.dhtDir}: ${(err as Error).message}`, { cause: err }) })
    const datastore = await BoundedDhtStore.open(DHT_DATASTORE_PREFIX, dhtDb, { providers: limits.dhtProviderRecords, providersPerPeer: limits.dhtProviderRecordsPerPeer, records: limits.dhtRecords })
    node = await createLibp2p({
      start: false,
      privateKey: init.privateKey,
      datastore,
      addresses: { listen: init.listen },
      transports: [tcpRememberingFailures(listenFailures)],
      connectionEncrypters: [noise({ crypto: noiseCrypto })],
      streamMuxers: [yamux({
        // Frames of up to 256 KiB instead of 64: a block answer crosses in one frame,
        // and the receiver, which sends a window update per data frame, sends a quarter
        // as many. A peer still cannot send more than the receive window it was given.
        maxMessageSize: 256 * 1024,
        maxInboundStreams: limits.streamsPerConnection,
        streamOptions: { maxReadBufferLength: limits.streamReadBuffer }
      })],
      connectionManager: {
        maxConnections: limits.connections,
        maxIncomingPendingConnections: limits.pendingInboundConnections,
        inboundConnectionThreshold: limits.inboundConnectionsPerSecond,
        inboundUpgradeTimeout: limits.handshakeMs
      },
      peerDiscovery: discovery,
      ...(init.psk !== undefined ? { connectionProtector: preSharedKey({ psk: init.psk }) } : {}),
      // The encrypted-connection hooks see the remote peer id once Noise has proved it,
      // before the muxer and any protocol: a peer off the allow-list never reaches
      // identify, the DHT, gossip or the block exchange.
      connectionGater: {
        ...(allow !== undefined ? { denyDialPeer: (p: PeerId) => !allow.has(p.toString()), denyOutboundEncryptedConnection: (p: PeerId) => !allow.has(p.toString()) } : {}),
        denyInboundEncryptedConnection: (p) => (allow !== undefined && !allow.has(p.toString())) || tooMany(p)
      },
      services: {
        identify: identify({ protocolPrefix: PROTOCOL_PREFIX.slice(1) }),
        ping: ping({ protocolPrefix: PROTOCOL_PREFIX.slice(1) }),
        dht: kadDHT({
          protocol: `${PROTOCOL_PREFIX}/lan/kad/1.0.0`,
          peerInfoMapper: removePublicAddressesMapper,
          clientMode: false,
          logPrefix: 'libp2p:dht-strata',
          datastorePrefix: DHT_DATASTORE_PREFIX,
          maxInboundStreams: limits.dhtInboundStreams,
          maxOutboundStreams: limits.dhtOutboundStreams
        }),
        pubsub: gossipsub({
          allowPublishToZeroTopicPeers: true,
          emitSelf: false,
          maxInboundDataLength: limits.gossipMessageBytes,
          maxInboundStreams: limits.gossipStreams,
          maxOutboundStreams: limits.gossipStreams
        })
      }
    })
    dhtStores.set(node, datastore)
  } catch (err) {
    await dhtDb.close()
    throw err
  }
  self.node = node
  // The provider records' database closes with the node.
  const stop = node.stop.bind(node)
  node.stop = async () => {
    await stop()
    if (dhtDb.status === 'open') await dhtDb.close()
  }
  // A start that fails to listen throws the first address that failed, with its reason.
  const start = node.start.bind(node)
  node.start = async () => {
    listenFailures.length = 0
    if (dhtDb.status === 'closed') await dhtDb.open()
    try {
      await start()
    } catch (err) {
      throw listenFailures[0] ?? err
    }
  }
  return node
}
