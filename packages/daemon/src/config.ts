import { statSync } from 'node:fs'
import { resolve } from 'node:path'
import type { Logger } from 'pino'
import { checkEpoch, checkScope, DEFAULT_SCOPE, MAX_READ_SCOPES } from '@strata/records'
import type { LocalStore, Store } from '@strata/store'
import { checkBootstrapAddress, checkDnsServer } from './discovery.ts'
import { DaemonConfigError } from './errors.ts'
import type { ExchangeInit } from './exchange.ts'
import type { GcBudgetInit } from './gc.ts'
import type { ScrubInit } from './scrub.ts'
import { SOCKET_NAME } from './protocol.ts'
import { peerIdOf, readPeerList, readPsk, writerOf } from './trust.ts'
import { RECENT_RECORDS } from './record-sync.ts'

/**
 * The index's LevelDB write buffer in a daemon's store: a restore writes its whole
 * manifest into the index while blocks arrive, and LevelDB's default buffer turned
 * that into many level-0 tables and compactions rewriting them.
 */
export const INDEX_WRITE_BUFFER_BYTES = 16 * 1024 * 1024

/**
 * How often a daemon's index writes its memtable out: between restores the small
 * writes of hits, records and uses would otherwise sit in the 16 MiB buffer for
 * hours (doc/decisions/index-flush.md).
 */
export const INDEX_FLUSH_EVERY_MS = 5 * 60_000

export interface DaemonInit {
  /** Where the store, the identity key and the control socket live. */
  dataDir: string
  /** Multiaddrs to listen on. Default `/ip4/0.0.0.0/tcp/7401`. */
  listen?: string[]
  /**
   * Addresses to join the fleet through, each with or without `/p2p/<peer id>`:
   * `/ip4/10.0.0.2/tcp/7401`, `/dns4/fleet.internal/tcp/7401` (every A record),
   * `/dnsaddr/fleet.example.com` (its `dnsaddr=` TXT records). Default none.
   */
  bootstrap?: string[]
  /** How often the bootstrap names are resolved again and their addresses dialled if not connected; 0: at start only. Default 30 000 ms. */
  bootstrapIntervalMs?: number
  /** The DNS server (`IP` or `IP:PORT`) that resolves bootstrap names. Default: the system's resolver. */
  dnsServer?: string
  /** Find peers on the LAN by mDNS. Default false. */
  mdns?: boolean
  /** Peers (besides the producer) that pull each new layer. Default 2. */
  replicas?: number
  /**
   * Whose records are accepted: writer keys (`NAME-N:BASE64`, as `strata
   * keygen-writer` prints them), peer ids (or ed25519 public keys, 64 hex digits),
   * each optionally `@GLOB` to trust it only in the scopes GLOB matches (`ID@pr/*`).
   * Default: anyone whose signature checks out. This node is always trusted.
   */
  trustedWriters?: string[]
  /** A file of trusted writers, one a line (`#` comments), added to `trustedWriters`. */
  trustedWritersFile?: string
  /** Records written in an earlier trust epoch are refused. Default 0. */
  epoch?: number
  /** Scopes a lookup uses when the caller names none, in order. Default `['default']`. */
  readScopes?: string[]
  /** Peer ids allowed to connect at all (connection gater, after the handshake); default: any. */
  allowPeers?: string[]
  /** A file of allowed peer ids, one a line (`#` comments), added to `allowPeers`. */
  allowPeersFile?: string
  /** A libp2p private network key (swarm.key format): only peers with the same key can connect. Default none. */
  pskFile?: string
  /** Refuse to start without `pskFile`. Default false. */
  requirePsk?: boolean
  /** How long a provider search (DHT) may take. Default 5 000 ms. */
  providerTimeoutMs?: number
  /** Once one provider of a layer is known, how much longer to wait for others. Default 300 ms. */
  providerGraceMs?: number
  /** Providers asked for one layer at most. Default 16. */
  maxProviders?: number
  /** Records sent to a peer on each new connection (gossip does not replay); 0: none. Default 64. */
  recentRecords?: number
  /** After a claim's push, how long to wait for a simultaneous claim on gossip before deciding who builds. Default 0 when every connected peer answered the push, else 500 ms (CLAIM_SETTLE_MS). */
  claimSettleMs?: number
  exchange?: ExchangeInit
  logger?: Logger
  /** Control socket path, or false for none. Default `<dataDir>/strata.sock`. */
  socket?: string | false
  /** `host:port` for the Prometheus text endpoint (GET /metrics). Default: none. */
  metricsListen?: string
  /** Keep the store within a size budget (LRU, leases, fleet copies; see doc/STORE.md). Default: no budget. */
  gc?: GcBudgetInit
  /** Re-read the store's layers in the background, marking corrupt ones (scrub.ts). Default 20 MB/s; `bytesPerSecond: 0` turns it off. */
  scrub?: ScrubInit
  /** An already open store (the daemon then does not close it). Default: the store in `dataDir`, opened without waiting. */
  store?: Store & LocalStore
}

/** The options with their defaults applied, files read and every value checked. */
export interface DaemonConfig {
  dataDir: string
  listen: string[]
  bootstrap: string[]
  bootstrapIntervalMs: number
  dnsServer: string | undefined
  mdns: boolean
  replicas: number
  /** Normalized writer entries (`ID` or `ID@GLOB`, ID a peer id or `NAME-N:BASE64`), or undefined for any signer. */
  trustedWriters: string[] | undefined
  epoch: number
  readScopes: string[]
  /** Normalized peer ids, or undefined for any peer. */
  allowPeers: string[] | undefined
  /** The private network key (swarm.key bytes), when one was given. */
  psk: Uint8Array | undefined
  providerTimeoutMs: number
  providerGraceMs: number
  maxProviders: number
  recentRecords: number
  claimSettleMs: number | undefined
  exchange: ExchangeInit | undefined
  socket: string | false
  metricsListen: string | undefined
  gc: GcBudgetInit | undefined
  scrub: ScrubInit | undefined
}

/**
 * Checks `init`, reads the files it names (key, peer lists) and applies the defaults.
 * Throws DaemonConfigError naming the option, or the file and line.
 */
export async function readConfig (init: DaemonInit, log: Logger): Promise<DaemonConfig> {
  if (typeof init.dataDir !== 'string' || init.dataDir === '') throw new TypeError('dataDir is required')
  // The socket, the store and the paths it reports to clients must not depend on the cwd.
  init = { ...init, dataDir: resolve(init.dataDir) }
  if (init.replicas !== undefined && (!Number.isInteger(init.replicas) || init.replicas < 0)) throw new DaemonConfigError(`replicas must be a whole number >= 0, got ${init.replicas}`)
  const peers = (list: readonly string[] | undefined, normalize: (s: string) => string): string[] | undefined => list?.map((p) => {
    try {
      return normalize(p)
    } catch (err) {
      throw new DaemonConfigError(`${JSON.stringify(p)} is not ${normalize === writerOf ? 'a writer key (NAME-N:BASE64), a peer id or an ed25519 public key, optionally with @SCOPE-PATTERN' : 'a peer id or an ed25519 public key'}`, { cause: err })
    }
  })
  for (const addr of init.bootstrap ?? []) {
    try {
      checkBootstrapAddress(addr)
    } catch (err) {
      throw new DaemonConfigError(`bootstrap address ${(err as Error).message}`, { cause: err })
    }
  }
  if (init.claimSettleMs !== undefined && (!Number.isInteger(init.claimSettleMs) || init.claimSettleMs < 0 || init.claimSettleMs > 60_000)) throw new DaemonConfigError(`claimSettleMs must be a whole number of milliseconds from 0 to 60000, got ${init.claimSettleMs}`)
  const interval = init.bootstrapIntervalMs
  if (interval !== undefined && (!Number.isInteger(interval) || interval < 0)) throw new DaemonConfigError(`bootstrapIntervalMs must be a whole number of milliseconds >= 0, got ${interval}`)
  if (init.dnsServer !== undefined) {
    try {
      checkDnsServer(init.dnsServer)
    } catch (err) {
      throw new DaemonConfigError(`DNS server ${(err as Error).message}`, { cause: err })
    }
  }
  let trustedWriters = peers(init.trustedWriters, writerOf)
  let allowPeers = peers(init.allowPeers, peerIdOf)
  try {
    if (init.epoch !== undefined) checkEpoch(init.epoch)
    if (init.readScopes !== undefined) {
      init.readScopes.forEach(checkScope)
      if (init.readScopes.length === 0 || init.readScopes.length > MAX_READ_SCOPES) throw new TypeError(`read scopes must be 1 to ${MAX_READ_SCOPES}, got ${init.readScopes.length}`)
    }
  } catch (err) {
    throw new DaemonConfigError((err as Error).message, { cause: err })
  }
  if (init.requirePsk === true && init.pskFile === undefined) throw new DaemonConfigError('a pre-shared key is required (--require-psk) but none was given (--psk-file FILE)')
  const psk = init.pskFile !== undefined ? await readPsk(init.pskFile) : undefined
  if (init.allowPeersFile !== undefined) allowPeers = [...(allowPeers ?? []), ...await readPeerList(init.allowPeersFile)]
  if (init.trustedWritersFile !== undefined) trustedWriters = [...(trustedWriters ?? []), ...await readPeerList(init.trustedWritersFile, writerOf)]
  if (psk !== undefined && (statSync(init.pskFile!).mode & 0o077) !== 0) log.warn({ event: 'psk-file-readable', file: init.pskFile }, 'the pre-shared key file is readable by other users: chmod 600 it')
  return {
    dataDir: init.dataDir,
    listen: init.listen ?? ['/ip4/0.0.0.0/tcp/7401'],
    bootstrap: init.bootstrap ?? [],
    bootstrapIntervalMs: interval ?? 30_000,
    dnsServer: init.dnsServer,
    mdns: init.mdns ?? false,
    replicas: init.replicas ?? 2,
    trustedWriters,
    epoch: init.epoch ?? 0,
    readScopes: init.readScopes ?? [DEFAULT_SCOPE],
    allowPeers,
    psk,
    providerTimeoutMs: init.providerTimeoutMs ?? 5000,
    providerGraceMs: init.providerGraceMs ?? 300,
    maxProviders: init.maxProviders ?? 16,
    recentRecords: init.recentRecords ?? RECENT_RECORDS,
    claimSettleMs: init.claimSettleMs,
    exchange: init.exchange,
    socket: init.socket ?? `${init.dataDir}/${SOCKET_NAME}`,
    metricsListen: init.metricsListen,
    gc: init.gc,
    scrub: init.scrub
  }
}
