import { createPrivateKey } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { bootstrap } from '@libp2p/bootstrap'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import type { GossipSub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import type { PrivateKey } from '@libp2p/interface'
import { kadDHT, removePublicAddressesMapper } from '@libp2p/kad-dht'
import type { KadDHT } from '@libp2p/kad-dht'
import { mdns } from '@libp2p/mdns'
import { ping } from '@libp2p/ping'
import type { Ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { loadIdentity } from '@strata/runner'
import { DaemonIdentityError } from './errors.ts'

export type StrataServices = { dht: KadDHT, pubsub: GossipSub, identify: Identify, ping: Ping }
export type StrataNode = Libp2p<StrataServices>

/** Protocol prefix of every libp2p service strata runs, so that a strata fleet is its own DHT. */
export const PROTOCOL_PREFIX = '/strata'

/**
 * The runner's identity key (`<dataDir>/identity.key`, ed25519 PKCS#8 PEM, created
 * on first use) as a libp2p private key: the daemon's peer id is the runner's, so
 * the records the runner signs are signed by the peer that serves them.
 */
export async function loadPrivateKey (dataDir: string, opts: { signal?: AbortSignal } = {}): Promise<PrivateKey> {
  const identity = await loadIdentity(dataDir, opts)
  const path = `${dataDir}/identity.key`
  try {
    const pem = await readFile(path, { encoding: 'utf8', signal: opts.signal })
    const jwk = createPrivateKey(pem).export({ format: 'jwk' })
    if (jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string') throw new Error('not an ed25519 key')
    const key = await generateKeyPairFromSeed('Ed25519', Buffer.from(jwk.d, 'base64url'))
    if (key.publicKey.toString() !== identity.peerId) throw new Error(`libp2p derives ${key.publicKey.toString()}, the runner ${identity.peerId}`)
    return key
  } catch (err) {
    throw new DaemonIdentityError(path, { cause: err })
  }
}

export interface NodeInit {
  privateKey: PrivateKey
  listen: string[]
  bootstrap: string[]
  mdns: boolean
  /** Peer ids allowed to connect; undefined: any. */
  allowPeers?: readonly string[]
}

export async function createNode (init: NodeInit): Promise<StrataNode> {
  const discovery = [
    ...(init.bootstrap.length > 0 ? [bootstrap({ list: init.bootstrap, timeout: 100 })] : []),
    ...(init.mdns ? [mdns({ serviceTag: 'strata.local' })] : [])
  ]
  const allow = init.allowPeers !== undefined ? new Set(init.allowPeers) : undefined
  return await createLibp2p({
    start: false,
    privateKey: init.privateKey,
    addresses: { listen: init.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: discovery,
    ...(allow !== undefined ? { connectionGater: { denyDialPeer: (p) => !allow.has(p.toString()), denyInboundEncryptedConnection: (p) => !allow.has(p.toString()) } } : {}),
    services: {
      identify: identify({ protocolPrefix: PROTOCOL_PREFIX.slice(1) }),
      ping: ping({ protocolPrefix: PROTOCOL_PREFIX.slice(1) }),
      dht: kadDHT({
        protocol: `${PROTOCOL_PREFIX}/lan/kad/1.0.0`,
        peerInfoMapper: removePublicAddressesMapper,
        clientMode: false,
        logPrefix: 'libp2p:dht-strata',
        datastorePrefix: '/dht-strata'
      }),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false })
    }
  })
}
