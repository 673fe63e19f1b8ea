// A fleet of N strata daemons (default 32) in network namespaces on this machine,
// measured: memory and idle CPU per daemon, gossip (a record's commit until every
// daemon holds it), a record lookup by a daemon that joined after the gossip (answered
// by its connected peers or by providers the DHT names: the row says which), and the
// time until a new layer has its `replicas` copies. Optionally churn and a partition.
//
//   node scripts/fleet.ts [--daemons 32] [--records 8] [--late 2] [--replicas 2] [--idle-s 30]
//                         [--churn] [--consumers 8] [--partition] [--json FILE] [--logs DIR] [--log-level debug]
//
// Needs root and iproute2. Everything (namespaces, daemons, data dirs) is removed on
// exit, on failure and on SIGINT/SIGTERM.

import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { setTimeout as delay } from 'node:timers/promises'
import { loadavg } from 'node:os'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { RECORD_FORMAT, loadIdentity, recordKey, signRecord } from '@strata/records'
import { sha256 } from 'multiformats/hashes/sha2'
import { randomBytes } from 'node:crypto'
import { Fleet, median, outcomes, percentile, procStats, waitFor } from './fleet-lib.ts'

const { values: opts } = parseArgs({
  options: {
    daemons: { type: 'string', default: '32' },
    records: { type: 'string', default: '8' },
    late: { type: 'string', default: '2' },
    replicas: { type: 'string', default: '2' },
    'idle-s': { type: 'string', default: '30' },
    churn: { type: 'boolean', default: false },
    consumers: { type: 'string', default: '8' },
    partition: { type: 'boolean', default: false },
    json: { type: 'string' },
    logs: { type: 'string' },
    'log-level': { type: 'string', default: 'info' }
  }
})
const N = Number(opts.daemons)
const RECORDS = Number(opts.records)
const LATE = Number(opts.late)
const REPLICAS = Number(opts.replicas)
const IDLE_S = Number(opts['idle-s'])
const CONSUMERS = Number(opts.consumers)
for (const [k, v] of Object.entries({ daemons: N, records: RECORDS, late: LATE, replicas: REPLICAS, 'idle-s': IDLE_S, consumers: CONSUMERS })) {
  if (!Number.isInteger(v) || v < 0) throw new TypeError(`--${k} wants a whole number, got ${v}`)
}
if (N < 3) throw new TypeError('--daemons must be at least 3')

const SEEDS = [0, 1]
const work = mkdtempSync('/var/tmp/strata-fleet-bench-')
process.on('exit', () => rmSync(work, { recursive: true, force: true }))
const fleet = await Fleet.create({ hosts: N + LATE, workDir: join(work, 'fleet'), daemonArgs: ['--replicas', String(REPLICAS)], logLevel: opts['log-level'] })
const t0 = Date.now()
const log = (msg: string): void => { console.error(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${msg}`) }
const results: Record<string, unknown> = { daemons: N, records: RECORDS, late: LATE, replicas: REPLICAS, loadStart: loadavg() }
const rows: Array<[string, string, string, string]> = []
const ms = (x: number): string => Number.isNaN(x) ? '-' : `${Math.round(x)} ms`
const mb = (x: number): string => `${(x / 1048576).toFixed(0)} MB`

try {
  // Seeds first, then the rest in batches (a seed refuses past 16 pending handshakes).
  for (const s of SEEDS) fleet.start(s, { bootstrap: SEEDS })
  for (const s of SEEDS) await fleet.ready(s)
  for (let i = SEEDS.length; i < N; i += 8) {
    const batch = [...Array(Math.min(8, N - i)).keys()].map((k) => i + k)
    for (const b of batch) fleet.start(b, { bootstrap: SEEDS })
    for (const b of batch) await fleet.ready(b, { peers: 1, ms: 180_000 })
  }
  log(`${N} daemons answer`)
  await waitFor('every daemon has 3+ peers', 180_000, async () => {
    const s = await Promise.all(fleet.running.map(async (i) => (await fleet.status(i)).peers.length))
    return s.every((n) => n >= 3) ? s : undefined
  }, () => '', 2000)

  // Idle cost.
  const before = fleet.running.map((i) => procStats(fleet.daemons[i]!.pid))
  await delay(IDLE_S * 1000)
  const after = fleet.running.map((i) => procStats(fleet.daemons[i]!.pid))
  const rss = after.map((a) => a?.rss ?? NaN)
  const cpu = after.map((a, k) => ((a?.cpuS ?? NaN) - (before[k]?.cpuS ?? NaN)) / IDLE_S * 100)
  const peers = await Promise.all(fleet.running.map(async (i) => (await fleet.status(i)).peers.length))
  results.idle = { rss, cpuPercent: cpu, peers }
  rows.push(['RSS per daemon (idle)', mb(median(rss)), mb(percentile(rss, 99)), mb(Math.max(...rss))])
  rows.push(['idle CPU per daemon', `${median(cpu).toFixed(1)} %`, `${percentile(cpu, 99).toFixed(1)} %`, `${Math.max(...cpu).toFixed(1)} %`])
  rows.push(['peers per daemon', String(median(peers)), String(percentile(peers, 99)), String(Math.max(...peers))])
  log('idle measured')

  // Gossip and replication: a one-step pipeline on a random daemon; every daemon polled.
  const gossip: number[] = []
  const gossipAll: number[] = []
  const replication: number[] = []
  let replicationShort = 0
  const keys: string[] = []
  let made0Layer: string | undefined
  for (let r = 0; r < RECORDS; r++) {
    const producer = 2 + Math.floor(Math.random() * (N - 2))
    const tag = `strata-fleet-${process.pid}-${r}-${Date.now()}`
    const dir = join(work, `p${r}`)
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir)
    writeFileSync(join(dir, 'strata.yml'), ['base: host', `salt: ${tag}`, 'steps:', '  - name: make', '    filter: []',
      `    run: mkdir -p /opt/${tag} && seq 1 ${20000 + r} > /opt/${tag}/data`, ''].join('\n'))
    const run = await fleet.strata(producer, ['run', '--json', '--data-dir', fleet.daemons[producer]!.dataDir], { cwd: dir })
    if (run.exitCode !== 0) throw new Error(`run on h${producer + 1}: ${run.stderr}`)
    const made = outcomes(run.stdout).get('make')!
    const slot = recordKey(made.key, 'default')
    keys.push(made.key)
    made0Layer ??= made.layer!
    const envelope = await (await fleet.client(producer)).getRecord(slot)
    const created = (dagCbor.decode((dagCbor.decode(envelope!) as { body: Uint8Array }).body) as { created: number }).created
    const root = CID.parse(made.layer!)
    const seen = new Map<number, number>()
    const holders = new Set<number>([producer])
    let replicated = NaN
    await waitFor(`record ${r} on every daemon and layer on ${REPLICAS} replicas`, 120_000, async () => {
      await Promise.all(fleet.running.map(async (i) => {
        const c = await fleet.client(i)
        if (!seen.has(i) && await c.getRecord(slot) !== undefined) seen.set(i, Date.now())
        if (!holders.has(i) && await c.has(root)) holders.add(i)
      }))
      if (Number.isNaN(replicated) && holders.size >= 1 + REPLICAS) replicated = Date.now() - created
      return seen.size === fleet.running.length && (!Number.isNaN(replicated) || Date.now() - created > 60_000) ? true : undefined
    }, () => `${seen.size}/${fleet.running.length} have the record, ${holders.size} hold the layer`, 50)
    if (Number.isNaN(replicated)) {
      replicationShort++
      log(`record ${r}: the layer has ${holders.size - 1} replicas after 60 s`)
    }
    const lags = [...seen].filter(([i]) => i !== producer).map(([, at]) => at - created)
    gossip.push(...lags)
    gossipAll.push(Math.max(...lags))
    if (!Number.isNaN(replicated)) replication.push(replicated)
    log(`record ${r}: every daemon in ${ms(Math.max(...lags))}, ${REPLICAS} replicas in ${ms(replicated)}`)
  }
  results.gossip = { perDaemonMs: gossip, allMs: gossipAll, replicationMs: replication, replicationShort }
  rows.push(['gossip: commit to one daemon', ms(median(gossip)), ms(percentile(gossip, 99)), ms(Math.max(...gossip))])
  rows.push(['gossip: commit to every daemon', ms(median(gossipAll)), ms(percentile(gossipAll, 99)), ms(Math.max(...gossipAll))])
  rows.push([`layer on ${REPLICAS} replicas (${replicationShort} short after 60 s)`, ms(median(replication)), ms(percentile(replication, 99)), ms(Math.max(...replication))])

  // Records a joiner gets on connecting (the last RECENT_RECORDS a peer stored) are local
  // to it: push the measured keys out of that window with records for the same layer.
  const filler = 2
  const identity = await loadIdentity(fleet.daemons[filler]!.dataDir)
  const fc = await fleet.client(filler)
  const fillerLayer = (await fc.listLayers())[0]?.root ?? CID.parse(made0Layer!)
  for (let f = 0; f < 70; f++) {
    const key = CID.create(1, 0x55, await sha256.digest(randomBytes(32)))
    const envelope = signRecord({ v: RECORD_FORMAT, key, parent: null, layer: fillerLayer, size: 0, env: [], created: Date.now(), producer: identity.peerId, scope: 'default', epoch: 0, writer: null }, identity)
    await fc.putRecord(recordKey(key, 'default'), envelope)
  }
  await delay(5000)
  // Late joiners look the keys up: their store is empty, so the DHT answers.
  const lookups: number[] = []
  const lookupSources = { peer: 0, dht: 0 }
  let lookupMisses = 0
  let localLookups = 0
  let lateStuck = 0
  for (let l = 0; l < LATE; l++) {
    const i = N + l
    fleet.start(i, { bootstrap: SEEDS })
    try {
      await fleet.ready(i, { peers: 3, ms: 120_000 })
    } catch (err) {
      lateStuck++
      log(`late joiner h${i + 1}: ${(err as Error).message}`)
      continue
    }
    const c = await fleet.client(i)
    for (const k of keys) {
      const s = performance.now()
      try {
        const found = await c.lookup(k, { signal: AbortSignal.timeout(30_000) })
        const took = performance.now() - s
        if (found.source === 'peer' || found.source === 'dht') {
          lookups.push(took)
          lookupSources[found.source]++
        } else localLookups++
      } catch {
        lookupMisses++
      }
    }
  }
  results.lookup = { ms: lookups, ...lookupSources, misses: lookupMisses, local: localLookups, lateStuck }
  rows.push([`record lookup by a late joiner (${lookupSources.peer} from connected peers, ${lookupSources.dht} through the DHT, ${lookupMisses} missed, ${localLookups} local, ${lateStuck} joiners without peers)`, ms(median(lookups)), ms(percentile(lookups, 99)), ms(Math.max(...lookups))])

  if (opts.churn) await churn()
  if (opts.partition) await partition()

  const final = fleet.running.map((i) => procStats(fleet.daemons[i]!.pid)?.rss ?? NaN)
  rows.push(['RSS per daemon (end)', mb(median(final)), mb(percentile(final, 99)), mb(Math.max(...final))])
  results.loadEnd = loadavg()

  console.log(`\n${N} daemons (+${LATE} late), replicas ${REPLICAS}, load average at start ${(results.loadStart as number[]).map((x) => x.toFixed(1)).join(' ')}, at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}\n`)
  console.log(`${'measure'.padEnd(44)} ${'p50'.padStart(10)} ${'p99'.padStart(10)} ${'max'.padStart(10)}`)
  for (const [what, a, b, c] of rows) console.log(`${what.padEnd(44)} ${a.padStart(10)} ${b.padStart(10)} ${c.padStart(10)}`)
  if (opts.json !== undefined) writeFileSync(opts.json, JSON.stringify(results, null, 1))
} finally {
  // The daemons' logs, kept when asked (the data dirs go).
  if (opts.logs !== undefined) cpSync(join(work, 'fleet'), opts.logs, { recursive: true, filter: (src) => !src.slice(join(work, 'fleet').length + 1).includes('/') && (src.endsWith('.log') || src === join(work, 'fleet')) })
  await fleet.destroy()
}

/** A pipeline of one step making a few MB, in its own directory; returns the directory. */
function pipelineDir (name: string, lines: number): string {
  const dir = join(work, name)
  mkdirSync(dir, { recursive: true })
  const tag = `strata-fleet-${process.pid}-${name}`
  writeFileSync(join(dir, 'strata.yml'), ['base: host', `salt: ${tag}`, 'steps:', '  - name: make', '    filter: []',
    `    run: mkdir -p /opt/${tag} && seq 1 ${lines} > /opt/${tag}/data`, ''].join('\n'))
  return dir
}

async function holdersOf (root: string): Promise<number[]> {
  const out: number[] = []
  for (const i of fleet.running) if ((await fleet.layers(i)).has(root)) out.push(i)
  return out
}

/**
 * While `--consumers` daemons restore a new layer, kill -9 a third of the fleet (its producer and
 * a replica among them, never every holder), start new daemons in their place; every
 * run must complete (a hit or the step run), the layer must survive, and a holder's
 * `copies` must come to the truth.
 */
async function churn (): Promise<void> {
  const dir = pipelineDir('churn', 600_000)
  const producer = 2 + Math.floor(Math.random() * (N - 2))
  const run = await fleet.strata(producer, ['run', '--json', '--data-dir', fleet.daemons[producer]!.dataDir], { cwd: dir })
  if (run.exitCode !== 0) throw new Error(`churn producer h${producer + 1}: ${run.stderr}`)
  const root = outcomes(run.stdout).get('make')!.layer!
  const before = await waitFor('the churn layer on its replicas', 120_000, async () => {
    const h = await holdersOf(root)
    return h.length >= 1 + REPLICAS ? h : undefined
  }, () => '', 500)
  const others = fleet.running.filter((i) => !before.includes(i) && !SEEDS.includes(i)).sort(() => Math.random() - 0.5)
  const consumers = others.slice(0, CONSUMERS)
  const replica = before.find((i) => i !== producer)!
  const victims = [producer, ...(before.length > 2 ? [replica] : []), ...others.slice(CONSUMERS)].slice(0, Math.floor(N / 3))
  if (consumers.length < CONSUMERS || victims.length < Math.floor(N / 3)) throw new Error(`churn: ${N} daemons are too few for ${CONSUMERS} consumers and a third killed`)
  log(`churn: layer on ${before.map((i) => `h${i + 1}`).join(' ')}; killing ${victims.length} (${victims.map((i) => `h${i + 1}`).join(' ')}); consumers ${consumers.map((i) => `h${i + 1}`).join(' ')}`)
  const t = Date.now()
  const runs = consumers.map(async (c) => {
    const r = await fleet.strata(c, ['run', '--json', '--data-dir', fleet.daemons[c]!.dataDir], { cwd: dir, timeoutMs: 300_000 })
    return { c, r, ms: Date.now() - t }
  })
  for (const v of victims) await fleet.kill9(v)
  for (const v of victims) fleet.start(v, { bootstrap: SEEDS })
  const done = await Promise.all(runs)
  const how = done.map(({ c, r, ms: took }) => `h${c + 1} ${r.exitCode === 0 ? outcomes(r.stdout).get('make')?.how ?? '?' : `exit ${r.exitCode ?? r.signal}`} in ${ms(took)}`)
  for (const v of victims) await fleet.ready(v, { peers: 1, ms: 120_000 })
  const after = await holdersOf(root)
  const reporter = after.find((i) => !victims.includes(i))!
  const tc = Date.now()
  let last = ''
  // A live peer whose fetch failed still provides the layer for a while: the count may stay above the truth.
  const converged = await waitFor('churn: copies equal the live holders', 90_000, async () => {
    const st = await fleet.status(reporter, { copies: true, ms: 60_000 })
    const truth = (await holdersOf(root)).length
    const claimed = st.layers.find((l) => l.root === root)?.copies
    last = `status ${claimed}, truth ${truth}`
    return claimed === truth ? true : undefined
  }, () => last, 2000).then(() => true, () => false)
  results.churn = { victims: victims.length, runs: how, holdersBefore: before.length, holdersAfter: after.length, copiesConvergeMs: converged ? Date.now() - tc : null, copiesLast: last }
  log(`churn: ${how.join(', ')}; holders ${before.length} -> ${after.length}; copies ${converged ? `right after ${ms(Date.now() - tc)}` : `not right after 90 s (${last})`}`)
  rows.push([`churn: consumer runs (${victims.length} killed)`, ms(median(done.map((d) => d.ms))), ms(percentile(done.map((d) => d.ms), 99)), ms(Math.max(...done.map((d) => d.ms)))])
  if (done.some(({ r }) => r.exitCode !== 0) || after.length === 0) throw new Error(`churn failed: ${how.join(', ')}, holders after ${after.length}`)
}

/** Splits the fleet in halves, writes a record in each, heals: time until every daemon has both. */
async function partition (): Promise<void> {
  const all = fleet.running
  const side = all.filter((_, k) => k % 2 === 1)
  const rest = all.filter((i) => !side.includes(i))
  fleet.partition(side)
  const keys: string[] = []
  for (const [name, half] of [['split-a', rest], ['split-b', side]] as const) {
    const dir = pipelineDir(name, 30_000)
    const h = half[Math.floor(Math.random() * half.length)]!
    const r = await fleet.strata(h, ['run', '--json', '--data-dir', fleet.daemons[h]!.dataDir], { cwd: dir })
    if (r.exitCode !== 0) throw new Error(`partition: run on h${h + 1}: ${r.stderr}`)
    keys.push(recordKey(outcomes(r.stdout).get('make')!.key, 'default'))
  }
  await delay(15_000)
  fleet.heal()
  const t = Date.now()
  let lacking = 0
  await waitFor('partition: every daemon has the records of both halves', 180_000, async () => {
    lacking = 0
    for (const i of fleet.running) for (const k of keys) if (!(await fleet.hasRecord(i, k))) lacking++
    return lacking === 0 ? true : undefined
  }, () => `${lacking} missing`, 250)
  results.partition = { healToAllMs: Date.now() - t }
  rows.push(['partition: heal to every daemon', ms(Date.now() - t), '-', '-'])
  log(`partition: both halves' records everywhere ${ms(Date.now() - t)} after healing`)
}
