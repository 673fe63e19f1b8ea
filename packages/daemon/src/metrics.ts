import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { Daemon } from './daemon.ts'

/** The daemon's Prometheus metrics, in a registry of its own (several daemons may share a process). */
export class DaemonMetrics {
  readonly registry = new Registry()
  readonly hits: Counter<'source'>
  readonly fetchDuration: Histogram
  readonly captureDuration: Histogram

  constructor (daemon: Daemon) {
    const registers = [this.registry]
    this.hits = new Counter({ name: 'strata_hits_total', help: 'Step lookups by outcome: local hit, peer hit, miss', labelNames: ['source'], registers })
    const buckets = [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300]
    this.fetchDuration = new Histogram({ name: 'strata_fetch_duration_seconds', help: 'Restoring a layer from peers', buckets, registers })
    this.captureDuration = new Histogram({ name: 'strata_capture_duration_seconds', help: 'Committing a captured layer into the store', buckets, registers })
    const c = daemon.exchange.counters
    // The exchange keeps the running totals; collect() copies them at scrape time.
    const counter = (name: string, help: string, read: () => number): void => {
      new Counter({ name, help, registers, collect () { this.reset(); this.inc(read()) } })
    }
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers, collect () { this.set(read()) } })
    }
    counter('strata_bytes_from_peers_total', 'Block bytes received from peers', () => c.bytesFromPeers)
    counter('strata_bytes_to_peers_total', 'Block bytes served to peers', () => c.bytesToPeers)
    counter('strata_blocks_rejected_total', 'Blocks from peers that did not match their CID', () => c.blocksRejected)
    // One series per reason a record was refused (untrusted-signer, old-epoch, wrong-scope, bad-signature, ...).
    new Counter({
      name: 'strata_records_rejected_total',
      help: 'Records refused, by reason: each is a miss',
      labelNames: ['reason'],
      registers,
      collect () {
        this.reset()
        for (const [reason, n] of Object.entries(daemon.rejected)) this.inc({ reason }, n)
      }
    })
    counter('strata_layers_corrupt_found_total', 'Layers the background scrub found corrupt and marked', () => daemon.scrub.counters.corrupt)
    counter('strata_scrub_bytes_total', 'Layer content bytes the background scrub re-read', () => daemon.scrub.counters.bytes)
    counter('strata_layers_replicated_total', 'Layers pulled to keep copies in the fleet', () => daemon.counters.replicated)
    gauge('strata_peers_connected', 'Peers with an open connection', () => daemon.node.getPeers().length)
  }

  async text (): Promise<string> {
    return await this.registry.metrics()
  }
}
