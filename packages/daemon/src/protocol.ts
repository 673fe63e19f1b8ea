import { CID } from 'multiformats/cid'
import type { RecordRejectReason } from '@strata/records'
import type { Entry } from '@strata/chunker'
import type { LayerInfo } from '@strata/store'
import type { ExchangeCounters } from './exchange.ts'
import type { HitSource, ProcessStats, RecentHit } from './fleet-view.ts'

/**
 * The control API's wire: HTTP + JSON on a unix socket in the data dir, `POST` only.
 * The server (control.ts) and the client (client.ts) share these names and shapes;
 * this module loads nothing but multiformats, so the client stays light.
 */
export const SOCKET_NAME = 'strata.sock'
/** Largest request body: a record or a path, never block data. */
export const MAX_REQUEST_BYTES = 1024 * 1024
/** The lease a claim asks for: how long peers wait for a holder that stopped renewing. */
export const CLAIM_LEASE_MS = 10_000
/** How often a client renews a claim it holds, well within the lease: two renewals may be lost. */
export const CLAIM_RENEW_MS = 3_000

/** One line of `/v1/store/entries`: a layer entry as `strata ls` shows it (xattr names, the number of chunks). */
export interface EntryJson {
  path: string
  type: string
  mode: number
  uid: number
  gid: number
  mtime: [number, number]
  size: number
  target?: string
  opaque?: true
  xattrs?: string[]
  chunks?: number
}

export interface LayerJson { root: string, path: string, size: number, entries: number, blocks: number, created: number }

export function entryJson (e: Entry): EntryJson {
  return {
    path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, size: e.size,
    ...(e.target !== undefined ? { target: e.target } : {}),
    ...(e.opaque === true ? { opaque: true as const } : {}),
    ...(e.xattrs !== undefined ? { xattrs: e.xattrs.map(([n]) => n) } : {}),
    ...(e.chunks !== undefined ? { chunks: e.chunks.length } : {})
  }
}

export function layerJson (l: LayerInfo): LayerJson {
  return { root: l.root.toString(), path: l.path, size: l.size, entries: l.entries, blocks: l.blocks, created: l.created }
}

export function layerOf (j: LayerJson): LayerInfo {
  return { root: CID.parse(j.root), path: j.path, size: j.size, entries: j.entries, blocks: j.blocks, created: j.created }
}

export interface LayerStatus {
  root: string
  size: number
  entries: number
  /** Peers the DHT knows to hold it, this one included. */
  copies: number
}

export interface DaemonStatus {
  peerId: string
  addresses: string[]
  peers: string[]
  banned: string[]
  layers: LayerStatus[]
  counters: ExchangeCounters & { recordsLearned: number, recordsRejected: number, replicated: number }
  /** Records refused, by reason. */
  recordsRejected: Partial<Record<RecordRejectReason, number>>
  trustedWriters: string[] | null
  epoch: number
  readScopes: string[]
  privateNetwork: boolean
  /** Steps served since start, by source, as the runner reported them. */
  hits: Record<HitSource, number>
  /** The last few of them, oldest first. */
  recentHits: RecentHit[]
  /** Records learned from peers on new connections (gossip does not replay). */
  recordSync: { syncs: number, recordsSynced: number, syncsDropped: number, remembered: number }
  /** This daemon's memory and open descriptors. */
  process: ProcessStats
  /** One build per key: claims granted to this node's runners, held by others, peers' claims expired, claims refused (and why), live now, peers that hear this node's claims. */
  claims: { granted: number, held: number, expired: number, rejected: number, live: number, subscribers: number, rejectedBy: Partial<Record<RecordRejectReason, number>> }
  /** The DHT records this node keeps for the fleet (bounded: doc/LIMITS.md): provider records, the peers they name, and those dropped to make room. */
  dht: { providerRecords: number, providingPeers: number, providersDropped: number, recordsDropped: number }
}

/** `/v1/status`. */
export type StatusJson = DaemonStatus & { dataDir: string }

/** `/v1/lookup`. */
export interface LookupJson { layer: string, producer: string, envelope: string, source: string }

/** The last line of `/v1/fetch` and `/v1/resolve` (`type: 'done'`). */
export interface FetchJson { layer: LayerJson, providers: number, bytes: number, durationMs: number, recordSource?: string }

/** How any request fails: the body, or the last NDJSON line (`type: 'error'`). */
export interface ErrorJson { error: { code: string, message: string } }

/** `/v1/claim`: granted (`id`: this claim, renewed with `/v1/claim/renew`), or held by `holder` (`id`: its claim, waited on with `/v1/claim/wait`; `own`: this node's claim that lost, to be released by the client that signed it). */
export type ClaimJson = { status: 'granted', id: string } | { status: 'held', holder: string, id: string, own?: string }

/** `/v1/claim/wait`. */
export interface ClaimWaitJson { outcome: 'record' | 'released' | 'expired' | 'timeout' }
