import { createServer } from 'node:http'
import type { Server } from 'node:http'
import type { Logger } from 'pino'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { DaemonConfigError } from './errors.ts'
import type { ExchangeCounters } from './exchange.ts'

/** What the metrics read at scrape time. */
export interface MetricsComponents {
  /** The block exchange's running totals. */
  exchange: Readonly<ExchangeCounters>
  /** Records refused, by reason. */
  rejected: Readonly<Partial<Record<string, number>>>
  /** Layers this node pulled to keep copies in the fleet. */
  replicated(): number
  /** Peers with an open connection. */
  peers(): number
  /** The background scrub's running totals. */
  scrub: Readonly<{ corrupt: number, bytes: number }>
  /** The claims' running totals. */
  claims: Readonly<{ granted: number, held: number, expired: number }>
  /** Claims refused, by reason. */
  claimsRejected: Readonly<Partial<Record<string, number>>>
  /** Live claims in the table, this node's and its peers'. */
  liveClaims(): number
}

/** The daemon's Prometheus metrics, in a registry of its own (several daemons may share a process). */
export class DaemonMetrics {
  readonly registry = new Registry()
  readonly hits: Counter<'source'>
  readonly misses: Counter
  readonly fetchDuration: Histogram
  readonly captureDuration: Histogram

  constructor (components: MetricsComponents) {
    const registers = [this.registry]
    this.hits = new Counter({ name: 'strata_hits_total', help: 'Step lookups that hit, by where the layer came from: local or peer', labelNames: ['source'], registers })
    this.misses = new Counter({ name: 'strata_misses_total', help: 'Step lookups that missed: the step ran', registers })
    const buckets = [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300]
    this.fetchDuration = new Histogram({ name: 'strata_fetch_duration_seconds', help: 'Restoring a layer from peers', buckets, registers })
    this.captureDuration = new Histogram({ name: 'strata_capture_duration_seconds', help: 'Committing a captured layer into the store', buckets, registers })
    const c = components.exchange
    // The components keep the running totals; collect() copies them at scrape time.
    const counter = (name: string, help: string, read: () => number): void => {
      new Counter({ name, help, registers, collect () { this.reset(); this.inc(read()) } })
    }
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers, collect () { this.set(read()) } })
    }
    counter('strata_bytes_from_peers_total', 'Block bytes received from peers', () => c.bytesFromPeers)
    counter('strata_bytes_to_peers_total', 'Block bytes served to peers', () => c.bytesToPeers)
    counter('strata_wire_bytes_from_peers_total', 'Bytes the block streams carried from peers, compressed where negotiated', () => c.wireBytesFromPeers)
    counter('strata_wire_bytes_to_peers_total', 'Bytes the block streams carried to peers, compressed where negotiated', () => c.wireBytesToPeers)
    counter('strata_blocks_rejected_total', 'Blocks from peers that did not match their CID', () => c.blocksRejected)
    counter('strata_blocks_duplicate_total', 'Blocks a fetch received a second time (each logged with its reason)', () => c.blocksDuplicate)
    counter('strata_blocks_for_sharers_total', 'Blocks fetched because a peer sharing the fetch asked for them first', () => c.blocksForSharers)
    // One series per reason a record was refused (untrusted-signer, old-epoch, wrong-scope, bad-signature, ...).
    new Counter({
      name: 'strata_records_rejected_total',
      help: 'Records refused, by reason: each is a miss',
      labelNames: ['reason'],
      registers,
      collect () {
        this.reset()
        for (const [reason, n] of Object.entries(components.rejected)) this.inc({ reason }, n ?? 0)
      }
    })
    counter('strata_layers_corrupt_found_total', 'Layers the background scrub found corrupt and marked', () => components.scrub.corrupt)
    counter('strata_scrub_bytes_total', 'Layer content bytes the background scrub re-read', () => components.scrub.bytes)
    counter('strata_layers_replicated_total', 'Layers pulled to keep copies in the fleet', () => components.replicated())
    counter('strata_claims_granted_total', 'Claims that let this node\'s runner build a key no peer was building', () => components.claims.granted)
    counter('strata_claims_held_total', 'Claims answered "held": another node was building the key, the runner waited for it', () => components.claims.held)
    counter('strata_claims_expired_total', 'Peers\' claims that expired: their holder died or stopped renewing', () => components.claims.expired)
    new Counter({
      name: 'strata_claims_rejected_total',
      help: 'Claims refused, by reason (untrusted-signer, bad-signature, ...): ignored',
      labelNames: ['reason'],
      registers,
      collect () {
        this.reset()
        for (const [reason, n] of Object.entries(components.claimsRejected)) this.inc({ reason }, n ?? 0)
      }
    })
    gauge('strata_claims_live', 'Live claims this node knows, its own and its peers\'', () => components.liveClaims())
    gauge('strata_peers_connected', 'Peers with an open connection', () => components.peers())
  }

  async text (): Promise<string> {
    return await this.registry.metrics()
  }
}

/** Serves `GET /metrics` on `listen` (`HOST:PORT`; port 0 picks one). Throws DaemonConfigError for a malformed address. */
export async function serveMetrics (metrics: DaemonMetrics, listen: string, log: Logger): Promise<Server> {
  const i = listen.lastIndexOf(':')
  const host = listen.slice(0, i)
  const port = Number(listen.slice(i + 1))
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new DaemonConfigError(`--metrics-listen wants HOST:PORT, got ${JSON.stringify(listen)}`)
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end()
      return
    }
    metrics.text().then((text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text), (err: unknown) => {
      log.warn({ err }, 'metrics failed')
      res.writeHead(500).end()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host.replace(/^\[|\]$/g, ''), () => resolve())
  })
  return server
}
