// strata's restore against a central cache, in a netns cluster: one host serves the
// tree as a `.tar.zst` over HTTP (and HTTPS, TLS 1.3), consumers on the other hosts
// fetch it at once with `curl | zstd -d | tar -x` into their own directories; the
// strata side restores the same tree from a producer daemon on the server's host.
//
//   node scripts/bench/http-baseline.ts [--tree DIR] [--consumers 1,8] [--unshaped-consumers 1]
//                                       [--rate 200mbit] [--reps 3] [--hosts 8] [--server node|python]
//                                       [--no-https] [--no-strata] [--no-dedup] [--json] [--keep] [--fs ext4|here]
//                                       [--profile DIR] [--memory]
//
// Two phases over the same cluster, tree and daemons: links unshaped (veth: only
// CPU counts), then every host's link shaped both ways to --rate (tc tbf; the
// server's host the same as every other), which doc/decisions/compression.md says
// why. Timed per consumer: from its start to the end of `sync` after the restore.
// Per rep: the CPU seconds of every host's cgroup (server or producer included), the
// bytes the consumer hosts' links carried, the daemons' own CPU and peak RSS.
// Untimed: creating the archive, packing the layer, removing the previous rep's
// directories and a `sync` before each rep. Consumers are spread round-robin over
// `--hosts` consumer hosts; methods alternate within a rep. Then, unless --no-dedup,
// consumer 0 holds the layer and fetches the same tree after one dependency bump
// (fixture big-tree-bump): the block bytes it moves against the layer's size, with
// the trees as npm installed them and with every mtime set to one epoch. The
// targets of issue I are printed last, each against the baseline of the same run.
// Everything is written to a journaled ext4 made for the run (scratch-fs.ts says
// why); --fs here writes to the cache dir's own filesystem instead.

import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, openSync, readFileSync } from 'node:fs'
import { mkdir, rm, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { cpus, loadavg } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { createCluster, rateBits, terminate } from '../netns.ts'
import type { Host, LinkShape } from '../netns.ts'
import { bigTree, bumpedTree, DEFAULT_CACHE_DIR, treeStats } from './fixture.ts'
import type { TreeStats } from './fixture.ts'
import { formatTable, parseFlags, strataBin, summarize } from './measure.ts'
import { scratchFs } from './scratch-fs.ts'
import type { MemorySample } from './memory-sampler.ts'

const SERVE_FILE = fileURLToPath(new URL('./serve-file.ts', import.meta.url))
const ARCHIVE = 'tree.tar.zst'
const PORT = 8080
const TLS_PORT = 8443

export class StrataNotReadyError extends Error {
  override name = 'StrataNotReadyError'
  code = 'BENCH_STRATA_NOT_READY'
}

const STRATA_PORT = 4001

/**
 * POSTs to a daemon's control socket (a unix socket: no network involved). NDJSON
 * answers (fetch) resolve with their last line, and an `error` line rejects.
 */
async function control (dataDir: string, path: string, body: object): Promise<Record<string, unknown>> {
  return await new Promise((resolve, reject) => {
    // No keep-alive: a pooled socket the daemon closed meanwhile would fail the next request with EPIPE.
    const req = request({ socketPath: join(dataDir, 'strata.sock'), method: 'POST', path, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = ''
      res.setEncoding('utf8').on('data', (s: string) => { text += s })
      res.on('end', () => {
        try {
          const last = JSON.parse(text.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>
          const error = last.error as { code?: string, message?: string } | undefined
          if (res.statusCode !== 200 || last.type === 'error' || error !== undefined) reject(new Error(`${path} on ${dataDir}: ${error?.code ?? res.statusCode} ${error?.message ?? text}`))
          else resolve(last)
        } catch (err) {
          reject(err)
        }
      })
    })
    req.on('error', reject)
    req.end(JSON.stringify(body))
  })
}

/** What restoreWithStrata needs: a daemon per consumer, and the layer on the producer. */
export interface StrataFleet {
  producer: { host: Host, dataDir: string, peerId: string, pid: number | undefined }
  /** Consumer i's daemon: its own data dir (and port), so consumers sharing a host stay apart. */
  consumers: Array<{ host: Host, dataDir: string, pid: number | undefined }>
  /** Root CID of the tree's layer. */
  layer: string
  packSeconds: number
}

/** CPU seconds a process has used so far, user and system apart, from /proc; 0 once it is gone. */
export function cpuSeconds (pid: number | undefined): { user: number, sys: number } {
  if (pid === undefined) return { user: 0, sys: 0 }
  try {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ').at(-1)!.split(' ')
    return { user: Number(fields[11]) / CLOCK_TICKS, sys: Number(fields[12]) / CLOCK_TICKS }
  } catch {
    return { user: 0, sys: 0 }
  }
}

/** A process's peak resident memory so far (VmHWM), in MB; 0 once it is gone. */
export function peakRssMb (pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const kb = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return kb === null ? 0 : Number(kb[1]) / 1024
  } catch {
    return 0
  }
}

/**
 * CPU seconds the whole machine has been busy so far (user, nice, system, irq and
 * softirq of every CPU, from /proc/stat): what a method costs in all, server and
 * kernel included, which per-process counters cannot tell for the HTTP pipeline.
 */
export function machineBusySeconds (): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number)
  const [user, nice, system, , , irq, softirq] = fields as [number, number, number, number, number, number, number]
  return (user + nice + system + irq + softirq) / CLOCK_TICKS
}

/** Node flags the daemons start with (--profile DIR: a CPU profile each, written when it stops). */
let daemonNodeFlags: string[] = []
/**
 * The daemons' environment: with --memory, memory-sampler.ts preloaded (read by
 * memoryAtPeak) through NODE_OPTIONS, so that the bin's own node flags and malloc
 * settings stay as they are.
 */
let daemonEnv: NodeJS.ProcessEnv | undefined

const MEMORY_SAMPLER = fileURLToPath(new URL('./memory-sampler.ts', import.meta.url))

/** A daemon's main-thread JS heap and external buffers at its largest RSS so far (MB), with --memory. */
function memoryAtPeak (dataDir: string): MemorySample['atPeakRss'] | undefined {
  try {
    return (JSON.parse(readFileSync(join(dataDir, 'memory-sample.json'), 'utf8')) as MemorySample).atPeakRss
  } catch {
    return undefined
  }
}

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100

async function startDaemon (host: Host, dataDir: string, port: number, bootstrap: string[], log: string): Promise<{ peerId: string, pid: number | undefined }> {
  await mkdir(dataDir, { recursive: true })
  const args = ['daemon', '--data-dir', dataDir, '--listen', `/ip4/${host.address}/tcp/${port}`, '--replicas', '0', ...bootstrap.flatMap((b) => ['--bootstrap', b])]
  const child = daemonNodeFlags.length === 0
    ? host.spawn(strataBin(), args, { stdio: ['ignore', 'ignore', openSync(log, 'a')], env: daemonEnv })
    : host.spawn(process.execPath, [...daemonNodeFlags, strataBin(), ...args], { stdio: ['ignore', 'ignore', openSync(log, 'a')], env: daemonEnv })
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`strata daemon on ${host.name} exited with ${child.exitCode}; see ${log}`)
    try {
      const s = await control(dataDir, '/v1/status', { copies: false }) as { peerId: string, peers: string[] }
      if (bootstrap.length === 0 || s.peers.length > 0) return { peerId: s.peerId, pid: child.pid }
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`strata daemon on ${host.name} not ready after 60 s; see ${log}`)
    await delay(200)
  }
}

/**
 * Starts `strata daemon` on the producer host and one per consumer (on the consumer
 * hosts, round-robin, bootstrapped from the producer), and packs the tree on the
 * producer through its daemon (a copy of the tree is committed into its store,
 * which provides the layer on the DHT).
 */
export async function startStrataFleet (producer: Host, consumerHosts: (i: number) => Host, consumers: number, tree: string, work: string): Promise<StrataFleet> {
  if (!existsSync(join(dirname(strataBin()), '..', '..', 'daemon', 'package.json'))) throw new StrataNotReadyError('needs the daemon (packages/daemon)')
  await mkdir(work, { recursive: true })
  const producerDir = join(work, 'producer')
  const { peerId, pid } = await startDaemon(producer, producerDir, STRATA_PORT, [], join(work, 'producer.log'))
  const bootstrap = [`/ip4/${producer.address}/tcp/${STRATA_PORT}/p2p/${peerId}`]
  const list = Array.from({ length: consumers }, (_, i) => ({ host: consumerHosts(i), dataDir: join(work, `consumer-${i}`), i }))
  // One per host at a time: a host's daemons differ in port, counted per host.
  const perHost = new Map<string, number>()
  const ports = list.map((c) => { const n = perHost.get(c.host.name) ?? 0; perHost.set(c.host.name, n + 1); return STRATA_PORT + n })
  const pids = await Promise.all(list.map(async (c, k) => (await startDaemon(c.host, c.dataDir, ports[k]!, bootstrap, join(work, `consumer-${c.i}.log`))).pid))
  const src = join(work, 'src')
  run('cp', ['-a', '--reflink=auto', tree, src])
  run('sync', [])
  let layer = ''
  const packSeconds = await timed(async () => { layer = (await control(producerDir, '/v1/store/commit', { dir: src }) as { root: string }).root })
  return { producer: { host: producer, dataDir: producerDir, peerId, pid }, consumers: list.map((c, k) => ({ ...c, pid: pids[k] })), layer, packSeconds }
}

/** Untimed, before each rep: consumer i no longer holds the layer. */
async function forgetLayer (fleet: StrataFleet, i: number): Promise<void> {
  const c = fleet.consumers[i]!
  const has = await control(c.dataDir, '/v1/store/layer', { root: fleet.layer }) as { layer: unknown }
  if (has.layer !== null) await control(c.dataDir, '/v1/store/remove', { root: fleet.layer })
}

/**
 * Consumer i's daemon fetches the layer from the fleet into its store (the layer
 * directory is the restored tree, as the runner mounts it), then `sync`. Returns
 * the layer directory.
 */
export async function restoreWithStrata (fleet: StrataFleet, i: number): Promise<string> {
  const c = fleet.consumers[i]!
  const done = await control(c.dataDir, '/v1/fetch', { root: fleet.layer }) as { layer: { path: string }, providers: number, bytes: number }
  await c.host.exec('sync', [])
  return done.layer.path
}

/** The baseline consumer: fetch, decompress and extract in one pipeline, then sync. */
async function restoreWithHttp (url: string, host: Host, dest: string): Promise<string> {
  const script = 'set -o pipefail; curl -sSfk --max-time 900 "$1" | zstd -d -q | tar -xf - -C "$2" && sync'
  await host.exec('bash', ['-c', script, 'restore', url, dest])
  return dest
}

interface Method {
  /** Untimed, before each rep with `n` consumers. */
  prepare: (n: number) => Promise<void>
  /** Consumer i's restore; resolves with the restored tree's directory. */
  restore: (i: number) => Promise<string>
  /** The daemons' figures since `prepare`, where it can tell (strata). */
  cpu?: (n: number) => Cpu
}

/**
 * CPU seconds: the producer's, a consumer's on average (and of that, user time: the
 * rest is the kernel's), all daemons'; and the largest consumer's peak RSS so far.
 */
interface Cpu { producer: number, consumerMean: number, consumerUserMean: number, total: number, consumerPeakRssMb: number }

/** One rep of one method with n consumers. */
interface Rep {
  /** Every consumer's seconds. */
  seconds: number[]
  /** CPU seconds of every host's cgroup together: server (or producer) and consumers. */
  hostsCpu: number
  /** The whole machine's busy CPU seconds (other work on the machine included). */
  machineCpu: number
  /** Bytes the consumer hosts' links carried, both ways, per consumer. */
  wireBytesPerConsumer: number
  /** The same, received only: with consumers serving each other, the rest is what they sent. */
  wireBytesInPerConsumer: number
  /** Bytes the server's (or producer's) link sent. */
  serverWireBytesOut: number
  daemons?: Cpu
}

async function timed (fn: () => Promise<void>): Promise<number> {
  const started = process.hrtime.bigint()
  await fn()
  return Number(process.hrtime.bigint() - started) / 1e9
}

function run (cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.error?.message ?? r.stderr}`)
}

function requireTools (): void {
  const missing = ['curl', 'zstd', 'tar', 'bash', 'ip'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0)
  if (missing.length > 0) throw new Error(`missing ${missing.join(', ')}: apt-get install -y ${missing.map((t) => t === 'ip' ? 'iproute2' : t).join(' ')}`)
}

async function createArchive (tree: string, file: string): Promise<number> {
  return await timed(async () => {
    const child = spawn('bash', ['-c', 'set -o pipefail; tar -C "$1" -cf - . | zstd -T0 -3 -q -o "$2"', 'pack', tree, file], { stdio: ['ignore', 'ignore', 'inherit'] })
    const [code] = await once(child, 'close') as [number | null]
    if (code !== 0) throw new Error(`creating ${file} from ${tree} failed (exit ${code})`)
  })
}

/** A self-signed P-256 certificate for the HTTPS baseline, made at bench start. */
function makeCertificate (dir: string): { cert: string, key: string } {
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=strata-bench', '-keyout', key, '-out', cert])
  return { cert, key }
}

async function startServer (host: Host, kind: string, dir: string, port: number, tls?: { cert: string, key: string }): Promise<() => Promise<void>> {
  const child = kind === 'python'
    ? host.spawn('python3', ['-u', '-m', 'http.server', '--bind', host.address, '--directory', dir, String(port)])
    : host.spawn(process.execPath, [SERVE_FILE, join(dir, ARCHIVE), host.address, String(port), ...(tls !== undefined ? [tls.cert, tls.key] : [])])
  if (kind === 'python') {
    // http.server announces itself late and on stdout only when unbuffered; ask it instead.
    const client = host.spawn('curl', ['-sSf', '-o', '/dev/null', '--retry', '50', '--retry-delay', '0', '--retry-connrefused', '--max-time', '20', `http://${host.address}:${port}/`])
    const [code] = await once(client, 'close') as [number | null]
    if (code !== 0) throw new Error('python3 -m http.server did not answer')
  } else {
    const [line] = await once(createInterface({ input: child.stdout! }), 'line') as [string]
    if (line !== 'listening') throw new Error(`serve-file.ts said ${JSON.stringify(line)}`)
  }
  return async () => { await terminate(child) }
}

function sameTree (a: TreeStats, b: TreeStats): boolean {
  return a.entries === b.entries && a.files === b.files && a.dirs === b.dirs && a.symlinks === b.symlinks && a.bytes === b.bytes
}

const TARGETS = {
  /** Bytes a one-consumer restore moves, against the archive's size. */
  wire: 1.15,
  /** CPU seconds of a one-consumer restore on unshaped links, against the HTTP baseline's. */
  cpu: 1.0,
  /** One consumer on shaped links, against HTTP. */
  shapedOne: 1.0,
  /** Eight consumers on shaped links, against HTTP's eight, and against strata's own one. */
  shapedFanout: 0.5,
  shapedFanoutVsOne: 2.0,
  /** Bytes a layer after one dependency bump moves when the first is present, against its size. */
  dedup: 0.15
}

interface Phase { name: string, link: LinkShape | undefined, counts: number[] }

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), {
    tree: '', consumers: '1,8', 'unshaped-consumers': '1', reps: '3', hosts: '8', rate: '200mbit', server: 'node',
    json: false, strata: true, https: true, dedup: true, keep: false, fs: 'ext4', profile: '', memory: false
  })
  if (flags.profile !== '') daemonNodeFlags = ['--cpu-prof', `--cpu-prof-dir=${flags.profile}`]
  if (flags.memory) daemonEnv = { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${MEMORY_SAMPLER}`.trim() }
  const reps = Number(flags.reps)
  const consumerHosts = Number(flags.hosts)
  const parseCounts = (v: string, name: string): number[] => {
    const list = v === '' ? [] : v.split(',').map(Number)
    if (list.some((n) => !Number.isInteger(n) || n < 1 || n > 64)) throw new TypeError(`--${name} must list counts from 1 to 64, got ${v}`)
    return list
  }
  const shapedCounts = parseCounts(flags.consumers, 'consumers')
  const unshapedCounts = parseCounts(flags['unshaped-consumers'], 'unshaped-consumers')
  if (!Number.isInteger(reps) || reps < 1) throw new TypeError(`--reps must be a positive integer, got ${flags.reps}`)
  if (!Number.isInteger(consumerHosts) || consumerHosts < 1 || consumerHosts > 64) throw new TypeError(`--hosts must be 1 to 64, got ${flags.hosts}`)
  if (flags.server !== 'node' && flags.server !== 'python') throw new TypeError(`--server must be node or python, got ${flags.server}`)
  if (flags.fs !== 'ext4' && flags.fs !== 'here') throw new TypeError(`--fs must be ext4 or here, got ${flags.fs}`)
  if (flags.https && flags.server !== 'node') throw new TypeError('--https needs --server node')
  const phases: Phase[] = []
  if (unshapedCounts.length > 0) phases.push({ name: 'unshaped', link: undefined, counts: unshapedCounts })
  if (flags.rate !== '' && flags.rate !== 'none' && shapedCounts.length > 0) {
    rateBits(flags.rate)
    phases.push({ name: `shaped ${flags.rate}`, link: { rate: flags.rate }, counts: shapedCounts })
  }
  const progress = (line: string): void => { process.stderr.write(line + '\n') }
  requireTools()

  const tree = flags.tree !== '' ? flags.tree : await bigTree()
  const bumped = flags.dedup && flags.strata ? await bumpedTree() : undefined
  const stats = await treeStats(tree)
  // Other work on the machine skews every figure; the report says how busy it was.
  const loadBefore = loadavg()[0]!
  progress(`tree ${tree}: ${stats.entries} entries, ${stats.files} files, ${(stats.bytes / 1e6).toFixed(1)} MB`)

  // The cluster's exit handler must run before the scratch space goes (a consumer
  // still extracting into it would leave debris), so it is created first.
  const cluster = await createCluster({ hosts: 1 + consumerHosts })
  // A producer store (two layers), the archive, and a store and a directory per
  // consumer, at twice the tree's bytes each: a small file takes a whole 4 KiB block.
  const most = Math.max(...phases.flatMap((p) => p.counts))
  const scratch = scratchFs(process.env.STRATA_BENCH_CACHE ?? DEFAULT_CACHE_DIR, `http-baseline-${process.pid}`,
    Math.max(8, Math.ceil((2 * most + 10) * 2 * stats.bytes / 2 ** 30)), flags.fs)
  const work = scratch.dir
  progress(`writing to ${work}: ${scratch.kind}`)
  // --keep leaves the daemons' logs (and stores) for a look afterwards.
  const removeWork = (): void => {
    if (!flags.keep) scratch.remove()
    else {
      scratch.keep()
      progress(`kept ${work} (${scratch.kind}); unmount it and remove its image when done`)
    }
  }
  const [server, ...consumers] = cluster.hosts as [Host, ...Host[]]
  const hostFor = (i: number): Host => consumers[i % consumers.length]!
  const stops: Array<() => Promise<void>> = []

  try {
    const serveDir = join(work, 'serve')
    await mkdir(serveDir, { recursive: true })
    const packSeconds = await createArchive(tree, join(serveDir, ARCHIVE))
    const archiveBytes = (await stat(join(serveDir, ARCHIVE))).size
    progress(`archive ${(archiveBytes / 1e6).toFixed(1)} MB in ${packSeconds.toFixed(1)} s; serving from ${server.ns} (${server.address}) with ${flags.server}`)
    stops.push(await startServer(server, flags.server, serveDir, PORT))
    const url = `http://${server.address}:${PORT}/${ARCHIVE}`

    const dest = (i: number): string => join(work, `dest-${i}`)
    const clearDests = async (n: number): Promise<void> => {
      await Promise.all(Array.from({ length: most }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))
      await Promise.all(Array.from({ length: n }, async (_, i) => await mkdir(dest(i), { recursive: true })))
    }
    const methods = new Map<string, Method>([['http', { prepare: clearDests, restore: async (i) => await restoreWithHttp(url, hostFor(i), dest(i)) }]])
    if (flags.https) {
      const tls = makeCertificate(serveDir)
      stops.push(await startServer(server, 'node', serveDir, TLS_PORT, tls))
      const tlsUrl = `https://${server.address}:${TLS_PORT}/${ARCHIVE}`
      methods.set('https', { prepare: clearDests, restore: async (i) => await restoreWithHttp(tlsUrl, hostFor(i), dest(i)) })
    }
    let strataStatus = 'measured'
    let strataPackSeconds: number | null = null
    let fleet: StrataFleet | undefined
    if (flags.strata) {
      try {
        fleet = await startStrataFleet(server, hostFor, most, tree, join(work, 'strata'))
        const f = fleet
        strataPackSeconds = f.packSeconds
        progress(`strata: layer ${f.layer} packed on ${server.name} in ${f.packSeconds.toFixed(1)} s; ${most} consumer daemons`)
        const daemons = [f.producer.pid, ...f.consumers.map((c) => c.pid)]
        let before: Array<{ user: number, sys: number }> = []
        methods.set('strata', {
          prepare: async () => {
            for (let i = 0; i < most; i++) await forgetLayer(f, i)
            before = daemons.map(cpuSeconds)
          },
          restore: async (i) => await restoreWithStrata(f, i),
          cpu: (n) => {
            const used = daemons.map((pid, k) => { const c = cpuSeconds(pid); return { user: c.user - before[k]!.user, sys: c.sys - before[k]!.sys } })
            const consumersUsed = used.slice(1, n + 1)
            const sum = (list: typeof used, fn: (c: { user: number, sys: number }) => number): number => list.reduce((a, c) => a + fn(c), 0)
            return {
              producer: used[0]!.user + used[0]!.sys,
              consumerMean: sum(consumersUsed, (c) => c.user + c.sys) / n,
              consumerUserMean: sum(consumersUsed, (c) => c.user) / n,
              total: sum(used, (c) => c.user + c.sys),
              consumerPeakRssMb: Math.max(...daemons.slice(1, n + 1).map(peakRssMb))
            }
          }
        })
      } catch (err) {
        if (!(err instanceof StrataNotReadyError)) throw err
        strataStatus = `not measured: ${err.message}`
        progress(`strata: ${strataStatus}`)
      }
    } else strataStatus = 'not measured (--no-strata)'

    const hostsCpu = (): number => cluster.hosts.reduce((n, h) => n + h.cpuSeconds(), 0)
    /** Bytes the consumer hosts' links received and sent, summed over them (one read of each link). */
    const consumerWire = (): { rx: number, tx: number } => consumers.reduce((n, h) => { const b = h.linkBytes(); return { rx: n.rx + b.rx, tx: n.tx + b.tx } }, { rx: 0, tx: 0 })
    /** results[phase][method][n] = reps */
    const results: Record<string, Record<string, Record<number, Rep[]>>> = {}
    const verified = new Set<string>()
    for (const phase of phases) {
      cluster.shape(phase.link)
      const byMethod: Record<string, Record<number, Rep[]>> = results[phase.name] = {}
      for (const n of phase.counts) {
        for (let rep = 0; rep < reps; rep++) {
          // Methods alternate within a rep, so that drift over the run hits both alike.
          for (const [name, method] of methods) {
            await method.prepare(n)
            run('sync', [])
            const restored: string[] = []
            const busyBefore = machineBusySeconds()
            const cpuBefore = hostsCpu()
            const wireBefore = consumerWire()
            const serverOutBefore = server.linkBytes().tx
            const seconds = await Promise.all(Array.from({ length: n }, async (_, i) => await timed(async () => { restored[i] = await method.restore(i) })))
            const wire = consumerWire()
            const r: Rep = { seconds, hostsCpu: hostsCpu() - cpuBefore, machineCpu: machineBusySeconds() - busyBefore, wireBytesPerConsumer: (wire.rx + wire.tx - wireBefore.rx - wireBefore.tx) / n, wireBytesInPerConsumer: (wire.rx - wireBefore.rx) / n, serverWireBytesOut: server.linkBytes().tx - serverOutBefore }
            const daemons = method.cpu?.(n)
            if (daemons !== undefined) r.daemons = daemons
            ;((byMethod[name] ??= {})[n] ??= []).push(r)
            const memory = daemons !== undefined && flags.memory && fleet !== undefined ? memoryAtPeak(fleet.consumers[0]!.dataDir) : undefined
            progress(`${phase.name} ${name} ${n} consumer(s) rep ${rep + 1}/${reps}: ${seconds.map((x) => x.toFixed(2)).join(' ')} s; hosts CPU s ${r.hostsCpu.toFixed(1)}, machine ${r.machineCpu.toFixed(1)}; wire ${(r.wireBytesPerConsumer / 1e6).toFixed(1)} MB a consumer (in ${(r.wireBytesInPerConsumer / 1e6).toFixed(1)}, out ${((r.wireBytesPerConsumer - r.wireBytesInPerConsumer) / 1e6).toFixed(1)}), server sent ${(r.serverWireBytesOut / 1e6).toFixed(1)} MB${daemons === undefined ? '' : `; daemons CPU s: producer ${daemons.producer.toFixed(1)}, each consumer ${daemons.consumerMean.toFixed(1)} (user ${daemons.consumerUserMean.toFixed(1)}); consumer peak RSS ${daemons.consumerPeakRssMb.toFixed(0)} MB`}${memory === undefined ? '' : ` (consumer 0 at its peak: RSS ${memory.rss} MB, JS heap ${memory.heapTotal} MB, external ${memory.external} MB)`}`)
            if (!verified.has(name)) {
              const got = await treeStats(restored[0]!)
              if (!sameTree(got, stats)) throw new Error(`${name} restored a different tree: ${JSON.stringify(got)} vs ${JSON.stringify(stats)}`)
              verified.add(name)
            }
          }
        }
      }
    }
    cluster.shape(undefined)
    await Promise.all(Array.from({ length: most }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))

    // Dedup: consumer 0 holds the first layer and fetches the same tree after one
    // dependency bump: as npm installed both (every file and directory has the time of
    // its install), and with every time set to one epoch in both, as a reproducible
    // capture would leave them.
    const dedup: Array<{ variant: string, layerBytes: number, blockBytes: number, wireBytes: number }> = []
    if (fleet !== undefined && bumped !== undefined) {
      const c = fleet.consumers[0]!
      const counters = async (): Promise<{ bytesFromPeers: number }> => (await control(c.dataDir, '/v1/status', { copies: false }) as { counters: { bytesFromPeers: number } }).counters
      const layerBytes = (await treeStats(bumped)).bytes
      const held: string[] = []
      await forgetLayer(fleet, 0)
      for (const variant of ['as installed', 'one mtime']) {
        const commit = async (dir: string, name: string): Promise<string> => {
          const src = join(work, 'strata', name)
          run('cp', ['-a', '--reflink=auto', dir, src])
          if (variant === 'one mtime') run('find', [src, '-exec', 'touch', '-h', '-d', '@1000000000', '{}', '+'])
          return (await control(fleet.producer.dataDir, '/v1/store/commit', { dir: src }) as { root: string }).root
        }
        const first = variant === 'as installed' ? fleet.layer : await commit(tree, 'src-epoch')
        const second = await commit(bumped, variant === 'as installed' ? 'src-bumped' : 'src-bumped-epoch')
        // The consumer holds the first layer and nothing else of either tree.
        for (const root of held) await control(c.dataDir, '/v1/store/remove', { root })
        held.length = 0
        held.push(first, second)
        await control(c.dataDir, '/v1/fetch', { root: first })
        const before = await counters()
        const wireBefore = c.host.linkBytes()
        await control(c.dataDir, '/v1/fetch', { root: second })
        const wireAfter = c.host.linkBytes()
        const d = { variant, layerBytes, blockBytes: (await counters()).bytesFromPeers - before.bytesFromPeers, wireBytes: wireAfter.rx + wireAfter.tx - wireBefore.rx - wireBefore.tx }
        dedup.push(d)
        progress(`dedup (${variant}): the bumped layer (${(layerBytes / 1e6).toFixed(1)} MB of files) moved ${(d.blockBytes / 1e6).toFixed(1)} MB of blocks, ${(d.wireBytes / 1e6).toFixed(1)} MB on the wire`)
      }
    }

    const report = {
      benchmark: 'restore, central HTTP(S) cache vs strata, on unshaped and shaped links',
      tree: { path: tree, ...stats },
      archive: { bytes: archiveBytes, packSeconds, compression: 'zstd -T0 -3' },
      server: flags.server,
      consumerHosts,
      reps,
      cpus: cpus().length,
      filesystem: scratch.kind,
      loadAverage: { before: loadBefore, after: loadavg()[0]! },
      strata: strataStatus,
      strataPackSeconds,
      phases,
      results,
      dedup
    }
    if (flags.json) {
      console.log(JSON.stringify(report, null, 2))
      return
    }
    console.log(`tree: ${tree} (${stats.entries} entries, ${(stats.bytes / 1e6).toFixed(1)} MB; archive ${(archiveBytes / 1e6).toFixed(1)} MB, packed in ${packSeconds.toFixed(1)} s)`)
    console.log(`medians over ${reps} reps; consumers on ${consumerHosts} hosts, server (${flags.server}) on its own; strata: ${strataStatus}; written to ${report.filesystem}`)
    console.log(`1-minute load average ${report.loadAverage.before.toFixed(1)} before, ${report.loadAverage.after.toFixed(1)} after (${cpus().length} CPUs)`)
    const med = (list: Rep[], f: (r: Rep) => number): number => summarize(list.map(f)).median
    const slowest = (r: Rep): number => Math.max(...r.seconds)
    for (const phase of [...phases].reverse()) {
      console.log(`\n${phase.name}${phase.link === undefined ? ' (veth, no limit)' : ' each way on every host, the server\'s too (tbf)'}`)
      const rows = [['method', 'consumers', 'slowest s', 'min-max', 'vs http', 'vs its 1', 'hosts CPU s', 'CPU s a restore', 'wire MB a consumer', 'daemon CPU s (producer / consumer)', 'peak RSS MB']]
      const byMethod = results[phase.name]!
      for (const [method, byN] of Object.entries(byMethod)) {
        for (const n of phase.counts) {
          const list = byN[n]!
          const http = byMethod.http![n]!
          const one = byN[1]
          const daemons = list.flatMap((r) => r.daemons === undefined ? [] : [r.daemons])
          rows.push([
            method, String(n), med(list, slowest).toFixed(2),
            `${Math.min(...list.map(slowest)).toFixed(2)}-${Math.max(...list.map(slowest)).toFixed(2)}`,
            (med(list, slowest) / med(http, slowest)).toFixed(2) + 'x',
            one === undefined ? '' : (med(list, slowest) / med(one, slowest)).toFixed(2) + 'x',
            med(list, (r) => r.hostsCpu).toFixed(1),
            (med(list, (r) => r.hostsCpu) / n).toFixed(1),
            (med(list, (r) => r.wireBytesPerConsumer) / 1e6).toFixed(1),
            daemons.length === 0 ? '' : `${summarize(daemons.map((d) => d.producer)).median.toFixed(1)} / ${summarize(daemons.map((d) => d.consumerMean)).median.toFixed(1)}`,
            daemons.length === 0 ? '' : Math.max(...daemons.map((d) => d.consumerPeakRssMb)).toFixed(0)
          ])
        }
      }
      console.log(formatTable(rows))
    }
    // The targets of issue I, each against the baseline measured in this run.
    const unshaped = results.unshaped
    const shaped = phases.find((p) => p.link !== undefined)
    const checks: string[][] = [['target', 'strata', 'against', 'ratio', 'limit', '']]
    const check = (name: string, value: number, base: number, limit: number, unit: string): void => {
      const ratio = value / base
      checks.push([name, `${value.toFixed(unit === 'MB' ? 1 : 2)} ${unit}`, `${base.toFixed(unit === 'MB' ? 1 : 2)} ${unit}`, ratio.toFixed(2) + 'x', `<= ${limit}x`, ratio <= limit ? 'met' : 'NOT met'])
    }
    const s1 = unshaped?.strata?.[1]
    if (s1 !== undefined) {
      check('bytes on the wire, one restore, vs the tar.zst', med(s1, (r) => r.wireBytesPerConsumer) / 1e6, archiveBytes / 1e6, TARGETS.wire, 'MB')
      check('CPU of one restore, unshaped, vs http', med(s1, (r) => r.hostsCpu), med(unshaped!.http![1]!, (r) => r.hostsCpu), TARGETS.cpu, 's')
    }
    if (shaped !== undefined && results[shaped.name]?.strata !== undefined) {
      const sh = results[shaped.name]!
      const one = sh.strata![1]
      if (one !== undefined) check('one consumer, shaped, vs http', med(one, slowest), med(sh.http![1]!, slowest), TARGETS.shapedOne, 's')
      const eight = sh.strata![8]
      if (eight !== undefined) check('8 consumers, shaped, vs http\'s 8', med(eight, slowest), med(sh.http![8]!, slowest), TARGETS.shapedFanout, 's')
      if (eight !== undefined && one !== undefined) check('8 consumers, shaped, vs strata\'s one', med(eight, slowest), med(one, slowest), TARGETS.shapedFanoutVsOne, 's')
    }
    for (const d of dedup) check(`a layer after one bump (${d.variant}), block bytes moved vs its size`, d.blockBytes / 1e6, d.layerBytes / 1e6, TARGETS.dedup, 'MB')
    console.log('\ntargets')
    console.log(formatTable(checks))
  } finally {
    for (const stop of stops) await stop()
    await cluster.destroy()
    removeWork()
  }
}

if (import.meta.main) await main()
