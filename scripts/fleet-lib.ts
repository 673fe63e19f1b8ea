// A fleet of strata daemons on one machine, one per network namespace of a
// scripts/netns.ts cluster: start, kill -9, restart with a fresh data dir, split the
// bridge in two and heal it, and read each daemon's state over its control socket
// (a unix socket in its data dir, reachable from this namespace). Used by
// scripts/fleet.ts, scripts/soak.ts and the fleet tests.

import { spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { connectDaemon } from '@strata/daemon/client'
import type { DaemonClient } from '@strata/daemon/client'
import type { StatusJson } from '../packages/daemon/src/protocol.ts'
import { createCluster, terminate } from './netns.ts'
import type { Cluster, Host } from './netns.ts'

export const bin = join(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'strata.js')
export const PORT = 4001
const HERMETIC: NodeJS.ProcessEnv = { STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '', STRATA_BOOTSTRAP: '' }

/** A wait that ran out: says what was awaited and what was last seen. */
export class FleetTimeoutError extends Error {
  override name = 'FleetTimeoutError'
  readonly code = 'ERR_FLEET_TIMEOUT'
}

/** Polls `check` until it returns a value other than undefined, at most `ms`; the error names `what` and the last `detail()`. */
export async function waitFor<T> (what: string, ms: number, check: () => Promise<T | undefined>, detail: () => string = () => '', everyMs = 200): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const got = await check()
    if (got !== undefined) return got
    if (Date.now() > deadline) throw new FleetTimeoutError(`${what}: not within ${Math.round(ms / 1000)} s${detail() === '' ? '' : ` (${detail()})`}`)
    await delay(everyMs)
  }
}

export interface FleetDaemon {
  index: number
  host: Host
  dataDir: string
  logFile: string
  child: ChildProcess
  pid: number
  /** Set once the daemon answers. */
  peerId: string
  /** Which daemon of this host this is: 0 the first, 1 after one restart, ... */
  generation: number
}

export interface FleetInit {
  hosts: number
  /** Directory for data dirs and logs; default a fresh one under /var/tmp, removed on destroy. */
  workDir?: string
  prefix?: string
  /** Extra `strata daemon` flags for every daemon. */
  daemonArgs?: string[]
  /** STRATA_LOG_LEVEL of the daemons; default info (the resolve and sync events). */
  logLevel?: string
  /** Extra environment of every daemon (e.g. NODE_OPTIONS=--max-old-space-size=256). */
  env?: NodeJS.ProcessEnv
}

export class Fleet {
  readonly cluster: Cluster
  readonly workDir: string
  readonly #ownsWork: boolean
  readonly #init: FleetInit
  /** The running daemon of each host, by host index (0-based); undefined when none runs. */
  readonly daemons: Array<FleetDaemon | undefined>
  readonly #generations: number[]
  readonly #clients = new Map<string, DaemonClient>()
  #split = false

  private constructor (cluster: Cluster, workDir: string, ownsWork: boolean, init: FleetInit) {
    this.cluster = cluster
    this.workDir = workDir
    this.#ownsWork = ownsWork
    this.#init = init
    this.daemons = cluster.hosts.map(() => undefined)
    this.#generations = cluster.hosts.map(() => 0)
  }

  static async create (init: FleetInit): Promise<Fleet> {
    const cluster = await createCluster({ hosts: init.hosts, ...(init.prefix !== undefined ? { prefix: init.prefix } : {}) })
    const owns = init.workDir === undefined
    const work = init.workDir ?? mkdtempSync('/var/tmp/strata-fleet-')
    mkdirSync(work, { recursive: true })
    return new Fleet(cluster, work, owns, init)
  }

  get hosts (): Host[] {
    return this.cluster.hosts
  }

  /** The bootstrap address of host `i` (no peer id: the handshake tells who answers). */
  address (i: number): string {
    return `/ip4/${this.hosts[i]!.address}/tcp/${PORT}`
  }

  /** Starts a daemon with a fresh data dir on host `i` (none may run there). */
  start (i: number, opts: { bootstrap?: number[], args?: string[], env?: NodeJS.ProcessEnv } = {}): FleetDaemon {
    if (this.daemons[i] !== undefined) throw new Error(`a daemon runs on h${i + 1} already`)
    const host = this.hosts[i]!
    const generation = this.#generations[i]!++
    const dataDir = join(this.workDir, `${host.name}-${generation}`)
    mkdirSync(dataDir, { recursive: true })
    const logFile = `${dataDir}.log`
    const boot = (opts.bootstrap ?? []).filter((b) => b !== i).flatMap((b) => ['--bootstrap', this.address(b)])
    const child = host.spawn(process.execPath, [
      bin, 'daemon', '--data-dir', dataDir, '--listen', this.address(i), '--bootstrap-interval', '5',
      ...boot, ...(this.#init.daemonArgs ?? []), ...(opts.args ?? [])
    ], {
      stdio: ['ignore', 'ignore', 'ignore'],
      env: { ...process.env, ...HERMETIC, ...this.#init.env, ...opts.env, STRATA_LOG_LEVEL: this.#init.logLevel ?? 'info', STRATA_LOG_FILE: logFile }
    })
    if (child.pid === undefined) throw new Error(`cannot start a daemon on ${host.name}`)
    const d: FleetDaemon = { index: i, host, dataDir, logFile, child, pid: child.pid, peerId: '', generation }
    this.daemons[i] = d
    child.once('exit', () => { if (this.daemons[i] === d) this.daemons[i] = undefined })
    return d
  }

  /** Waits until daemon `i` answers on its socket (and has at least `peers` peers). */
  async ready (i: number, opts: { peers?: number, ms?: number } = {}): Promise<StatusJson> {
    const d = this.daemons[i]
    if (d === undefined) throw new Error(`no daemon on h${i + 1}`)
    let last = ''
    const s = await waitFor(`daemon on h${i + 1} answers with ${opts.peers ?? 0}+ peers`, opts.ms ?? 60_000, async () => {
      if (d.child.exitCode !== null || d.child.signalCode !== null) throw new Error(`daemon on h${i + 1} exited (${d.child.exitCode ?? d.child.signalCode}): ${this.logTail(i)}`)
      try {
        const st = await this.status(i, { copies: false })
        last = `${st.peers.length} peers`
        return st.peers.length >= (opts.peers ?? 0) ? st : undefined
      } catch (err) {
        last = (err as Error).message
        return undefined
      }
    }, () => last, 250)
    d.peerId = s.peerId
    return s
  }

  async client (i: number): Promise<DaemonClient> {
    const d = this.daemons[i]
    if (d === undefined) throw new Error(`no daemon on h${i + 1}`)
    const cached = this.#clients.get(d.dataDir)
    if (cached !== undefined) return cached
    const c = await connectDaemon(d.dataDir, { signal: AbortSignal.timeout(10_000) })
    if (c === undefined) throw new Error(`no daemon answers on ${d.dataDir}`)
    this.#clients.set(d.dataDir, c)
    return c
  }

  async status (i: number, opts: { copies?: boolean, liveHeap?: boolean, ms?: number } = {}): Promise<StatusJson> {
    const c = await this.client(i)
    return await c.status({ copies: opts.copies ?? false, liveHeap: opts.liveHeap === true, signal: AbortSignal.timeout(opts.ms ?? 20_000) })
  }

  /** The layer roots daemon `i` holds. */
  async layers (i: number): Promise<Set<string>> {
    const c = await this.client(i)
    return new Set((await c.listLayers()).map((l) => l.root.toString()))
  }

  async hasRecord (i: number, slot: string): Promise<boolean> {
    return (await (await this.client(i)).getRecord(slot)) !== undefined
  }

  /** Indices of hosts with a running daemon. */
  get running (): number[] {
    return this.daemons.flatMap((d, i) => d !== undefined ? [i] : [])
  }

  /** kill -9: no goodbye to peers, no socket removed. */
  async kill9 (i: number): Promise<void> {
    const d = this.daemons[i]
    if (d === undefined) return
    this.#dropClient(d)
    const exited = new Promise<void>((resolve) => {
      if (d.child.exitCode !== null || d.child.signalCode !== null) resolve()
      else d.child.once('close', () => resolve())
    })
    try {
      process.kill(-d.pid, 'SIGKILL')
    } catch {
      // Gone already.
    }
    await exited
    this.daemons[i] = undefined
  }

  /** SIGTERM, then SIGKILL after the grace. */
  async stop (i: number): Promise<void> {
    const d = this.daemons[i]
    if (d === undefined) return
    this.#dropClient(d)
    await terminate(d.child, 5000)
    this.daemons[i] = undefined
  }

  #dropClient (d: FleetDaemon): void {
    const c = this.#clients.get(d.dataDir)
    this.#clients.delete(d.dataDir)
    void c?.close().catch(() => {})
  }

  /**
   * Splits the switch: the ports of `side` move to a second bridge, so they reach
   * each other and not the rest (no packet crosses; TCP connections stall, then time out).
   */
  partition (side: number[]): void {
    const sw = this.cluster.switchNs
    if (!this.#split) {
      ipIn(sw, ['link', 'add', 'br1', 'type', 'bridge'])
      ipIn(sw, ['link', 'set', 'br1', 'up'])
    }
    this.#split = true
    for (const i of side) ipIn(sw, ['link', 'set', this.hosts[i]!.name, 'master', 'br1'])
  }

  /** Every port back on the one bridge. */
  heal (): void {
    if (!this.#split) return
    const sw = this.cluster.switchNs
    for (const h of this.hosts) ipIn(sw, ['link', 'set', h.name, 'master', 'br0'])
  }

  /** Log lines of daemon `i` (its current data dir, or `logFile`) as objects; unparsable lines skipped. */
  events (logFile: string): Array<Record<string, unknown>> {
    let text: string
    try {
      text = readFileSync(logFile, 'utf8')
    } catch {
      return []
    }
    const out: Array<Record<string, unknown>> = []
    for (const line of text.split('\n')) {
      if (line === '') continue
      try {
        out.push(JSON.parse(line) as Record<string, unknown>)
      } catch {
        // A line cut by kill -9.
      }
    }
    return out
  }

  logTail (i: number, lines = 5): string {
    const d = this.daemons[i]
    if (d === undefined) return ''
    try {
      return readFileSync(d.logFile, 'utf8').trim().split('\n').slice(-lines).join(' | ')
    } catch {
      return ''
    }
  }

  /** Runs the CLI on host `i`; a non-zero exit is a result. */
  async strata (i: number, args: string[], opts: { cwd: string, timeoutMs?: number, env?: NodeJS.ProcessEnv }): Promise<{ exitCode: number | null, signal: string | null, stdout: string, stderr: string }> {
    return await this.hosts[i]!.exec(process.execPath, [bin, ...args], {
      cwd: opts.cwd,
      reject: false,
      timeout: opts.timeoutMs ?? 120_000,
      env: { ...process.env, ...HERMETIC, ...opts.env }
    })
  }

  async destroy (): Promise<void> {
    for (const c of this.#clients.values()) await c.close().catch(() => {})
    this.#clients.clear()
    await this.cluster.destroy()
    if (this.#ownsWork) rmSync(this.workDir, { recursive: true, force: true })
  }
}

function ipIn (ns: string, args: string[]): void {
  const r = spawnSync('ip', ['-n', ns, ...args], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`ip -n ${ns} ${args.join(' ')}: ${r.stderr.trim()}`)
}

/** RSS (bytes), CPU time (seconds) and open fds of a process, from /proc; undefined when it is gone. */
export function procStats (pid: number): { rss: number, rssAnon: number, rssFile: number, cpuS: number, fds: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) * 1024
    const rss = kb('VmRSS')
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const ticks = Number(f[11]) + Number(f[12])
    const fds = readdirSync(`/proc/${pid}/fd`).length
    // Anonymous memory (malloc, V8) against pages of mapped files (shared, reclaimable).
    return { rss, rssAnon: kb('RssAnon'), rssFile: kb('RssFile') + kb('RssShmem'), cpuS: ticks / 100, fds }
  } catch {
    return undefined
  }
}

/** Bytes of a process's anonymous memory backed by transparent huge pages (smaps_rollup); undefined when it is gone. */
export function anonHugePages (pid: number): number | undefined {
  try {
    return Number(/^AnonHugePages:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0) * 1024
  } catch {
    return undefined
  }
}

export function percentile (xs: number[], p: number): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}

export function median (xs: number[]): number {
  return percentile(xs, 50)
}

/** The JSON events of `strata run --json` (stdout). */
export function runEvents (stdout: string): Array<Record<string, unknown> & { type: string, step: string }> {
  return stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown> & { type: string, step: string })
}

/** A step's outcome in `strata run --json`'s events: hit (local or peer), or ran. */
export function outcomes (stdout: string): Map<string, { how: 'local' | 'peer' | 'ran', key: string, layer?: string, reason?: string }> {
  const out = new Map<string, { how: 'local' | 'peer' | 'ran', key: string, layer?: string, reason?: string }>()
  const reasons = new Map<string, string>()
  for (const e of runEvents(stdout)) {
    if (e.type === 'miss') reasons.set(e.step, e.reason as string)
    else if (e.type === 'hit') out.set(e.step, { how: e.source as 'local' | 'peer', key: e.key as string, layer: e.layer as string })
    else if (e.type === 'ran') out.set(e.step, { how: 'ran', key: e.key as string, ...(reasons.has(e.step) ? { reason: reasons.get(e.step)! } : {}) })
    else if (e.type === 'captured') {
      const o = out.get(e.step)
      if (o !== undefined) o.layer = e.layer as string
    }
  }
  return out
}

/**
 * Two steps: a blob of `lines` lines, then a step that checks it, so a wrong restore
 * fails the run. The checkout holds the daemons' data dirs, which change as they
 * work: the steps read none of it.
 */
export function blobPipeline (tag: string, lines: number): string {
  return [
    'base: host',
    `salt: ${tag}`,
    'steps:',
    '  - name: make',
    '    filter: []',
    `    run: mkdir -p /opt/${tag} && seq 1 ${lines} > /opt/${tag}/blob && sha256sum /opt/${tag}/blob > /opt/${tag}/blob.sum`,
    '  - name: use',
    '    filter: []',
    `    run: sha256sum -c /opt/${tag}/blob.sum && wc -l < /opt/${tag}/blob > /opt/${tag}/lines`,
    ''
  ].join('\n')
}

