// The central-cache baseline of issue C's benchmarks 1 and 2, in a netns cluster: one
// host serves the tree as a `.tar.zst` over HTTP, 1, 4 and 8 consumers on the other
// hosts fetch it at once with `curl | zstd -d | tar -x` into their own directories.
//
//   node scripts/bench/http-baseline.ts [--tree DIR] [--consumers 1,4,8] [--reps 3]
//                                       [--hosts 4] [--server node|python] [--no-strata] [--json] [--keep]
//                                       [--fs ext4|here]
//
// Timed per consumer: from its start to the end of `sync` after tar (the data is on
// disk, as a restore must leave it). Untimed: creating the archive (reported apart),
// removing the previous rep's directories and an `sync` before each rep. Consumers
// are spread round-robin over `--hosts` consumer hosts; the server has a host alone.
// The strata side runs in the same reps, alternating with the baseline: `strata daemon`
// on the server's host holds the tree as a layer (packed untimed), one daemon per
// consumer fetches it from the fleet into its own store (restoreWithStrata), then sync.
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
import { createCluster, terminate } from '../netns.ts'
import type { Host } from '../netns.ts'
import { bigTree, DEFAULT_CACHE_DIR, treeStats } from './fixture.ts'
import type { TreeStats } from './fixture.ts'
import { formatTable, parseFlags, strataBin, summarize } from './measure.ts'
import { scratchFs } from './scratch-fs.ts'
import type { Summary } from './measure.ts'

const SERVE_FILE = fileURLToPath(new URL('./serve-file.ts', import.meta.url))
const ARCHIVE = 'tree.tar.zst'
const PORT = 8080
const TARGET_FANOUT = 2.0

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

const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100

async function startDaemon (host: Host, dataDir: string, port: number, bootstrap: string[], log: string): Promise<{ peerId: string, pid: number | undefined }> {
  await mkdir(dataDir, { recursive: true })
  const args = ['daemon', '--data-dir', dataDir, '--listen', `/ip4/${host.address}/tcp/${port}`, '--replicas', '0', ...bootstrap.flatMap((b) => ['--bootstrap', b])]
  const child = host.spawn(strataBin(), args, { stdio: ['ignore', 'ignore', openSync(log, 'a')] })
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
  const script = 'set -o pipefail; curl -sSf --max-time 900 "$1" | zstd -d -q | tar -xf - -C "$2" && sync'
  await host.exec('bash', ['-c', script, 'restore', url, dest])
  return dest
}

interface Method {
  /** Untimed, before each rep with `n` consumers. */
  prepare: (n: number) => Promise<void>
  /** Consumer i's restore; resolves with the restored tree's directory. */
  restore: (i: number) => Promise<string>
  /** CPU seconds its processes used since `prepare`, where it can tell. */
  cpu?: (n: number) => Cpu
}

/**
 * CPU seconds: the producer's, a consumer's on average (and of that, user time: the
 * rest is the kernel's), all daemons'; and the largest consumer's peak RSS so far.
 */
interface Cpu { producer: number, consumerMean: number, consumerUserMean: number, total: number, consumerPeakRssMb: number }

interface MethodResult {
  consumers: number
  /** Every consumer's seconds, one array per rep. */
  samples: number[][]
  /** Over all consumers of all reps. */
  perConsumer: Summary
  /** The slowest consumer of each rep: when the last consumer is done. */
  slowest: Summary
  /** The daemons' CPU seconds in each rep (strata only). */
  cpu: Cpu[]
  /** The whole machine's busy CPU seconds in each rep. */
  machineCpu: number[]
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

async function startServer (host: Host, kind: string, dir: string): Promise<() => Promise<void>> {
  const child = kind === 'python'
    ? host.spawn('python3', ['-u', '-m', 'http.server', '--bind', host.address, '--directory', dir, String(PORT)])
    : host.spawn(process.execPath, [SERVE_FILE, join(dir, ARCHIVE), host.address, String(PORT)])
  if (kind === 'python') {
    // http.server announces itself late and on stdout only when unbuffered; ask it instead.
    const client = host.spawn('curl', ['-sSf', '-o', '/dev/null', '--retry', '50', '--retry-delay', '0', '--retry-connrefused', '--max-time', '20', `http://${host.address}:${PORT}/`])
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

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), { tree: '', consumers: '1,4,8', reps: '3', hosts: '4', server: 'node', json: false, strata: true, keep: false, fs: 'ext4' })
  const reps = Number(flags.reps)
  const consumerHosts = Number(flags.hosts)
  const counts = flags.consumers.split(',').map(Number)
  if (!Number.isInteger(reps) || reps < 1) throw new TypeError(`--reps must be a positive integer, got ${flags.reps}`)
  if (!Number.isInteger(consumerHosts) || consumerHosts < 1 || consumerHosts > 64) throw new TypeError(`--hosts must be 1 to 64, got ${flags.hosts}`)
  if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 64)) throw new TypeError(`--consumers must list counts from 1 to 64, got ${flags.consumers}`)
  if (flags.server !== 'node' && flags.server !== 'python') throw new TypeError(`--server must be node or python, got ${flags.server}`)
  if (flags.fs !== 'ext4' && flags.fs !== 'here') throw new TypeError(`--fs must be ext4 or here, got ${flags.fs}`)
  const progress = (line: string): void => { process.stderr.write(line + '\n') }
  requireTools()

  const tree = flags.tree !== '' ? flags.tree : await bigTree()
  const stats = await treeStats(tree)
  // Other work on the machine skews every figure; the report says how busy it was.
  const loadBefore = loadavg()[0]!
  progress(`tree ${tree}: ${stats.entries} entries, ${stats.files} files, ${(stats.bytes / 1e6).toFixed(1)} MB`)

  // The cluster's exit handler must run before the scratch space goes (a consumer
  // still extracting into it would leave debris), so it is created first.
  const cluster = await createCluster({ hosts: 1 + consumerHosts })
  // A producer store, the archive, and a store and a directory per consumer, at
  // twice the tree's bytes each: a small file takes a whole 4 KiB block.
  const most = Math.max(...counts)
  const scratch = scratchFs(process.env.STRATA_BENCH_CACHE ?? DEFAULT_CACHE_DIR, `http-baseline-${process.pid}`,
    Math.max(8, Math.ceil((2 * most + 4) * 2 * stats.bytes / 2 ** 30)), flags.fs)
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
  let stopServer = async (): Promise<void> => {}

  try {
    const serveDir = join(work, 'serve')
    await mkdir(serveDir, { recursive: true })
    const packSeconds = await createArchive(tree, join(serveDir, ARCHIVE))
    const archiveBytes = (await stat(join(serveDir, ARCHIVE))).size
    progress(`archive ${(archiveBytes / 1e6).toFixed(1)} MB in ${packSeconds.toFixed(1)} s; serving from ${server.ns} (${server.address}) with ${flags.server}`)
    stopServer = await startServer(server, flags.server, serveDir)
    const url = `http://${server.address}:${PORT}/${ARCHIVE}`

    const dest = (i: number): string => join(work, `dest-${i}`)
    const methods = new Map<string, Method>([['http', {
      prepare: async (n) => {
        await Promise.all(Array.from({ length: most }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))
        await Promise.all(Array.from({ length: n }, async (_, i) => await mkdir(dest(i), { recursive: true })))
      },
      restore: async (i) => await restoreWithHttp(url, hostFor(i), dest(i))
    }]])
    let strataStatus = 'measured'
    let strataPackSeconds: number | null = null
    if (flags.strata) {
      try {
        const fleet = await startStrataFleet(server, hostFor, most, tree, join(work, 'strata'))
        strataPackSeconds = fleet.packSeconds
        progress(`strata: layer ${fleet.layer} packed on ${server.name} in ${fleet.packSeconds.toFixed(1)} s; ${most} consumer daemons`)
        const daemons = [fleet.producer.pid, ...fleet.consumers.map((c) => c.pid)]
        let before: Array<{ user: number, sys: number }> = []
        methods.set('strata', {
          prepare: async () => {
            for (let i = 0; i < most; i++) await forgetLayer(fleet, i)
            before = daemons.map(cpuSeconds)
          },
          restore: async (i) => await restoreWithStrata(fleet, i),
          // Where a fan-out's time goes on a small host: the daemons' CPU seconds in the rep.
          cpu: (n) => {
            const used = daemons.map((pid, k) => { const c = cpuSeconds(pid); return { user: c.user - before[k]!.user, sys: c.sys - before[k]!.sys } })
            const consumersUsed = used.slice(1, n + 1)
            const sum = (list: typeof used, f: (c: { user: number, sys: number }) => number): number => list.reduce((a, c) => a + f(c), 0)
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

    const samples = new Map<string, Map<number, number[][]>>([...methods.keys()].map((m) => [m, new Map(counts.map((n) => [n, []]))]))
    const cpuUsed = new Map<string, Map<number, Cpu[]>>([...methods.keys()].map((m) => [m, new Map(counts.map((n) => [n, []]))]))
    const machineUsed = new Map<string, Map<number, number[]>>([...methods.keys()].map((m) => [m, new Map(counts.map((n) => [n, []]))]))
    const verified = new Set<string>()
    for (const n of counts) {
      for (let rep = 0; rep < reps; rep++) {
        // Methods alternate within a rep, so that drift over the run hits both alike.
        for (const [name, method] of methods) {
          await method.prepare(n)
          run('sync', [])
          const restored: string[] = []
          const busyBefore = machineBusySeconds()
          const seconds = await Promise.all(Array.from({ length: n }, async (_, i) => await timed(async () => { restored[i] = await method.restore(i) })))
          const busy = machineBusySeconds() - busyBefore
          samples.get(name)!.get(n)!.push(seconds)
          machineUsed.get(name)!.get(n)!.push(busy)
          const cpu = method.cpu?.(n)
          if (cpu !== undefined) cpuUsed.get(name)!.get(n)!.push(cpu)
          progress(`${name} ${n} consumer(s) rep ${rep + 1}/${reps}: ${seconds.map((s) => s.toFixed(2)).join(' ')} s; machine CPU s ${busy.toFixed(1)}${cpu === undefined ? '' : `; CPU s: producer ${cpu.producer.toFixed(1)}, each consumer ${cpu.consumerMean.toFixed(1)} (user ${cpu.consumerUserMean.toFixed(1)}), all ${cpu.total.toFixed(1)}; consumer peak RSS ${cpu.consumerPeakRssMb.toFixed(0)} MB`}`)
          if (!verified.has(name)) {
            const got = await treeStats(restored[0]!)
            if (!sameTree(got, stats)) throw new Error(`${name} restored a different tree: ${JSON.stringify(got)} vs ${JSON.stringify(stats)}`)
            verified.add(name)
          }
        }
      }
    }
    await Promise.all(Array.from({ length: most }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))

    const results: Record<string, MethodResult[]> = {}
    for (const [method, byCount] of samples) {
      results[method] = [...byCount].map(([consumersN, s]) => ({
        consumers: consumersN,
        samples: s,
        perConsumer: summarize(s.flat()),
        slowest: summarize(s.map((r) => Math.max(...r))),
        cpu: cpuUsed.get(method)!.get(consumersN)!,
        machineCpu: machineUsed.get(method)!.get(consumersN)!
      }))
    }
    const report = {
      benchmark: 'fan-out restore, central HTTP cache vs strata',
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
      results
    }
    if (flags.json) {
      console.log(JSON.stringify(report, null, 2))
      return
    }
    console.log(`tree: ${tree} (${stats.entries} entries, ${(stats.bytes / 1e6).toFixed(1)} MB; archive ${(archiveBytes / 1e6).toFixed(1)} MB, packed in ${packSeconds.toFixed(1)} s)`)
    console.log(`medians over ${reps} reps; consumers on ${consumerHosts} hosts, server (${flags.server}) on its own; strata: ${strataStatus}`)
    console.log(`written to ${report.filesystem}`)
    console.log(`1-minute load average ${report.loadAverage.before.toFixed(1)} before, ${report.loadAverage.after.toFixed(1)} after (${cpus().length} CPUs)`)
    const rows = [['method', 'consumers', 'per consumer s', 'slowest s', 'min-max slowest', 'vs 1 consumer', 'aggregate MB/s', 'machine CPU s', 'CPU s each (user)', 'CPU s all', 'peak RSS MB']]
    for (const [method, list] of Object.entries(results)) {
      const one = list.find((r) => r.consumers === 1)?.slowest.median
      for (const r of list) {
        rows.push([
          method,
          String(r.consumers),
          r.perConsumer.median.toFixed(2),
          r.slowest.median.toFixed(2),
          `${r.slowest.min.toFixed(2)}-${r.slowest.max.toFixed(2)}`,
          one === undefined ? '' : (r.slowest.median / one).toFixed(2) + 'x',
          (r.consumers * stats.bytes / 1e6 / r.slowest.median).toFixed(0),
          summarize(r.machineCpu).median.toFixed(1),
          r.cpu.length === 0 ? '' : `${summarize(r.cpu.map((c) => c.consumerMean)).median.toFixed(1)} (${summarize(r.cpu.map((c) => c.consumerUserMean)).median.toFixed(1)})`,
          r.cpu.length === 0 ? '' : summarize(r.cpu.map((c) => c.total)).median.toFixed(1),
          r.cpu.length === 0 ? '' : Math.max(...r.cpu.map((c) => c.consumerPeakRssMb)).toFixed(0)
        ])
      }
    }
    console.log(formatTable(rows))
    console.log(`target (issue C): strata with 8 consumers <= ${TARGET_FANOUT}x its time with one, and <= 1.0x the http baseline`)
  } finally {
    await stopServer()
    await cluster.destroy()
    removeWork()
  }
}

if (import.meta.main) await main()
