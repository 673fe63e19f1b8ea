// The central-cache baseline of issue C's benchmarks 1 and 2, in a netns cluster: one
// host serves the tree as a `.tar.zst` over HTTP, 1, 4 and 8 consumers on the other
// hosts fetch it at once with `curl | zstd -d | tar -x` into their own directories.
//
//   node scripts/bench/http-baseline.ts [--tree DIR] [--consumers 1,4,8] [--reps 3]
//                                       [--hosts 4] [--server node|python] [--json]
//
// Timed per consumer: from its start to the end of `sync` after tar (the data is on
// disk, as a restore must leave it). Untimed: creating the archive (reported apart),
// removing the previous rep's directories and an `sync` before each rep. Consumers
// are spread round-robin over `--hosts` consumer hosts; the server has a host alone.
// The strata side (restoreWithStrata) is measured in the same run once the daemon
// exists; until then it is reported as not measured.

import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { rmSync } from 'node:fs'
import { mkdir, rm, stat } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { createCluster, terminate } from '../netns.ts'
import type { Cluster, Host } from '../netns.ts'
import { bigTree, DEFAULT_CACHE_DIR, treeStats } from './fixture.ts'
import type { TreeStats } from './fixture.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'
import type { Summary } from './measure.ts'

const SERVE_FILE = fileURLToPath(new URL('./serve-file.ts', import.meta.url))
const ARCHIVE = 'tree.tar.zst'
const PORT = 8080
const TARGET_FANOUT = 2.0

export class StrataNotReadyError extends Error {
  override name = 'StrataNotReadyError'
  code = 'BENCH_STRATA_NOT_READY'
}

/** What restoreWithStrata needs: the cluster with a daemon per host and the packed layer. */
export interface StrataFleet {
  cluster: Cluster
  producer: Host
  /** Root CID of the tree's layer, packed on the producer. */
  layer: string
}

/**
 * The strata side, to be wired when packages/daemon lands: start `strata daemon` in
 * every host (`node packages/cli/bin/strata.js daemon --data-dir <work>/<host>
 * --listen /ip4/<address>/tcp/4001 --bootstrap <producer's multiaddr>`), pack the
 * tree on the producer and return its layer.
 */
export async function startStrataFleet (_cluster: Cluster, _producer: Host, _tree: string, _work: string): Promise<StrataFleet> {
  throw new StrataNotReadyError('needs the daemon (packages/daemon)')
}

/**
 * Restores the fleet's layer into `dest` on `host` through that host's daemon, fetching
 * from peers, and returns once the tree is on disk (after `sync`).
 */
export async function restoreWithStrata (_fleet: StrataFleet, _host: Host, _dest: string): Promise<void> {
  throw new StrataNotReadyError('needs the daemon (packages/daemon)')
}

/** The baseline consumer: fetch, decompress and extract in one pipeline, then sync. */
async function restoreWithHttp (url: string, host: Host, dest: string): Promise<void> {
  const script = 'set -o pipefail; curl -sSf --max-time 900 "$1" | zstd -d -q | tar -xf - -C "$2" && sync'
  await host.exec('bash', ['-c', script, 'restore', url, dest])
}

type Restore = (host: Host, dest: string) => Promise<void>

interface MethodResult {
  consumers: number
  /** Every consumer's seconds, one array per rep. */
  samples: number[][]
  /** Over all consumers of all reps. */
  perConsumer: Summary
  /** The slowest consumer of each rep: when the last consumer is done. */
  slowest: Summary
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
  const flags = parseFlags(process.argv.slice(2), { tree: '', consumers: '1,4,8', reps: '3', hosts: '4', server: 'node', json: false })
  const reps = Number(flags.reps)
  const consumerHosts = Number(flags.hosts)
  const counts = flags.consumers.split(',').map(Number)
  if (!Number.isInteger(reps) || reps < 1) throw new TypeError(`--reps must be a positive integer, got ${flags.reps}`)
  if (!Number.isInteger(consumerHosts) || consumerHosts < 1 || consumerHosts > 64) throw new TypeError(`--hosts must be 1 to 64, got ${flags.hosts}`)
  if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 64)) throw new TypeError(`--consumers must list counts from 1 to 64, got ${flags.consumers}`)
  if (flags.server !== 'node' && flags.server !== 'python') throw new TypeError(`--server must be node or python, got ${flags.server}`)
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
  const work = join(process.env.STRATA_BENCH_CACHE ?? DEFAULT_CACHE_DIR, `http-baseline-${process.pid}`)
  const removeWork = (): void => rmSync(work, { recursive: true, force: true })
  process.once('exit', removeWork)
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

    const methods = new Map<string, Restore>([['http', async (host, dest) => await restoreWithHttp(url, host, dest)]])
    let strataStatus = 'measured'
    try {
      const fleet = await startStrataFleet(cluster, server, tree, join(work, 'strata'))
      methods.set('strata', async (host, dest) => await restoreWithStrata(fleet, host, dest))
    } catch (err) {
      if (!(err instanceof StrataNotReadyError)) throw err
      strataStatus = `not measured: ${err.message}`
      progress(`strata: ${strataStatus}`)
    }

    const samples = new Map<string, Map<number, number[][]>>([...methods.keys()].map((m) => [m, new Map(counts.map((n) => [n, []]))]))
    const dest = (i: number): string => join(work, `dest-${i}`)
    const verified = new Set<string>()
    for (const n of counts) {
      for (let rep = 0; rep < reps; rep++) {
        // Methods alternate within a rep, so that drift over the run hits both alike.
        for (const [method, restore] of methods) {
          await Promise.all(Array.from({ length: Math.max(...counts) }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))
          await Promise.all(Array.from({ length: n }, async (_, i) => await mkdir(dest(i), { recursive: true })))
          run('sync', [])
          const seconds = await Promise.all(Array.from({ length: n }, async (_, i) => await timed(async () => await restore(hostFor(i), dest(i)))))
          samples.get(method)!.get(n)!.push(seconds)
          progress(`${method} ${n} consumer(s) rep ${rep + 1}/${reps}: ${seconds.map((s) => s.toFixed(2)).join(' ')} s`)
          if (!verified.has(method)) {
            const got = await treeStats(dest(0))
            if (!sameTree(got, stats)) throw new Error(`${method} restored a different tree: ${JSON.stringify(got)} vs ${JSON.stringify(stats)}`)
            verified.add(method)
          }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.max(...counts) }, async (_, i) => await rm(dest(i), { recursive: true, force: true })))

    const results: Record<string, MethodResult[]> = {}
    for (const [method, byCount] of samples) {
      results[method] = [...byCount].map(([consumersN, s]) => ({
        consumers: consumersN,
        samples: s,
        perConsumer: summarize(s.flat()),
        slowest: summarize(s.map((r) => Math.max(...r)))
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
      loadAverage: { before: loadBefore, after: loadavg()[0]! },
      strata: strataStatus,
      results
    }
    if (flags.json) {
      console.log(JSON.stringify(report, null, 2))
      return
    }
    console.log(`tree: ${tree} (${stats.entries} entries, ${(stats.bytes / 1e6).toFixed(1)} MB; archive ${(archiveBytes / 1e6).toFixed(1)} MB, packed in ${packSeconds.toFixed(1)} s)`)
    console.log(`medians over ${reps} reps; consumers on ${consumerHosts} hosts, server (${flags.server}) on its own; strata: ${strataStatus}`)
    console.log(`1-minute load average ${report.loadAverage.before.toFixed(1)} before, ${report.loadAverage.after.toFixed(1)} after (${cpus().length} CPUs)`)
    const rows = [['method', 'consumers', 'per consumer s', 'slowest s', 'min-max slowest', 'vs 1 consumer', 'aggregate MB/s']]
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
          (r.consumers * stats.bytes / 1e6 / r.slowest.median).toFixed(0)
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
