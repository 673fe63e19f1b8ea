// A multi-host test cluster on one machine: N hosts as network namespaces, each with
// one veth into a bridge that lives in a namespace of its own (the "switch"), so the
// root namespace gains no link, address or route. Hosts get 10.231.0.<i+1>/24 and no
// default route: they reach each other and their own loopback, nothing else.
//
// With `link`, every host's link is shaped both ways with `tc` (tbf: a rate, a burst
// and a queue of `latencyMs`): the cluster looks like a fleet of VMs, each with its
// own NIC, where the one serving everybody is limited by its link. Each host also
// gets a cgroup of its own (cgroup v2, else v1 cpuacct), so `Host.cpuSeconds()`
// says what the processes started on it used.
//
//   node scripts/netns.ts up N [--prefix P] [--rate 200mbit]   create a cluster and keep it (prints it)
//   node scripts/netns.ts down PREFIX          remove one cluster and its processes
//   node scripts/netns.ts list                 clusters on this machine and their owners
//   node scripts/netns.ts cleanup [--all]      remove clusters whose creator has died
//
// Needs root and iproute2. Every cluster's bridge carries an alias naming its owner
// process, so `cleanup` can tell leftovers of a dead run from a parallel live one.

import { spawn as spawnChild, spawnSync } from 'node:child_process'
import type { ChildProcess, SpawnOptions, StdioOptions } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync } from 'node:fs'

export const SUBNET = '10.231.0.0/24'
export const MAX_HOSTS = 250
const SUBNET_BASE = '10.231.0.'
const BRIDGE = 'br0'
const HOST_IF = 'eth0'
const ALIAS_TAG = 'strata-netns'
const PREFIX_RE = /^[a-z][a-z0-9]{1,23}$/
const DEFAULT_GRACE_MS = 2000

export interface ClusterInit {
  /** Number of hosts, 1 to 250. */
  hosts: number
  /**
   * Start of every namespace name (`<prefix>-sw`, `<prefix>-h1`, ...): lower-case
   * letters and digits, 2 to 24 characters. Default `stn<pid>x<random>`, unique per run.
   */
  prefix?: string
  /** Shapes every host's link, both ways, alike (the server's as the clients'). Default: unshaped veth. */
  link?: LinkShape
}

export interface LinkShape {
  /** Rate each way, as tc takes it: `200mbit`, `1gbit`. */
  rate: string
  /** Bytes sent at line speed before the rate applies. Default 64 KiB (a GSO packet must fit). */
  burstBytes?: number
  /** Longest a packet waits in the queue before it is dropped. Default 20 ms. */
  latencyMs?: number
}

export interface ExecOptions {
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** Written to the command's stdin, which is closed afterwards. */
  input?: string | Buffer
  /** Sends SIGTERM (then SIGKILL after the grace period) when aborted. */
  signal?: AbortSignal
  /** Milliseconds before the command is terminated; default none. */
  timeout?: number
  /** Resolve with a non-zero exit instead of throwing NetnsCommandError; default false. */
  reject?: boolean
}

export interface ExecResult {
  stdout: string
  stderr: string
  exitCode: number | null
  signal: NodeJS.Signals | null
}

export interface HostSpawnOptions {
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** Default `['ignore', 'pipe', 'pipe']`. */
  stdio?: StdioOptions
}

export interface Host {
  /** `h1`, `h2`, ... */
  name: string
  /** The network namespace, for `ip netns exec NS ...`. */
  ns: string
  /** The host's IPv4 address in SUBNET. */
  address: string
  /** Runs a command inside the host's namespace and collects its output. */
  exec: (cmd: string, args?: string[], opts?: ExecOptions) => Promise<ExecResult>
  /**
   * Starts a command inside the host's namespace, in a process group of its own. The
   * cluster tracks it and terminates it (group and all) on destroy().
   */
  spawn: (cmd: string, args?: string[], opts?: HostSpawnOptions) => ChildProcess
  /** CPU seconds used so far by every process started with exec or spawn on this host (its cgroup). */
  cpuSeconds: () => number
  /** Bytes the host's link has received and sent so far (its interface counters). */
  linkBytes: () => { rx: number, tx: number }
}

export interface Cluster {
  prefix: string
  /** The namespace holding the bridge. */
  switchNs: string
  hosts: Host[]
  /**
   * Terminates tracked processes (SIGTERM, SIGKILL after `graceMs`, default 2000),
   * kills whatever else still runs in the namespaces, and deletes them. Idempotent.
   */
  destroy: (opts?: { graceMs?: number }) => Promise<void>
  /** Shapes every host's link as `link` says, or takes the shaping off (undefined). */
  shape: (link: LinkShape | undefined) => void
  /**
   * Keeps the cluster after this process ends (for the CLI's `up`): no teardown on
   * exit, and `cleanup` leaves it alone. Tracked processes are forgotten.
   */
  release: () => void
}

export class NetnsCommandError extends Error {
  override name = 'NetnsCommandError'
  code = 'NETNS_COMMAND_FAILED'
  readonly command: string
  readonly exitCode: number | null
  readonly signal: string | null
  readonly stderr: string
  constructor (command: string, exitCode: number | null, signal: string | null, stderr: string, options?: ErrorOptions) {
    super(`${command} failed (${signal ?? `exit ${exitCode}`})${stderr.trim() === '' ? '' : ': ' + stderr.trim().split('\n').slice(-3).join(' | ')}`, options)
    this.command = command
    this.exitCode = exitCode
    this.signal = signal
    this.stderr = stderr
  }
}

/** Host `i`'s MAC address: locally administered, unique within a cluster. */
function macOf (i: number): string {
  return `02:53:00:00:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`
}

/** Runs `ip ARGS` (with `input` on its stdin, for `-batch -`); throws NetnsCommandError on failure. */
function ip (args: string[], input?: string): string {
  const r = spawnSync('ip', args, { encoding: 'utf8', input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
  if (r.error !== undefined) throw new NetnsCommandError(`ip ${args.join(' ')}`, null, null, '', { cause: r.error })
  if (r.status !== 0) throw new NetnsCommandError(`ip ${args.join(' ')}`, r.status, r.signal, r.stderr)
  return r.stdout
}

/** Runs `tc ARGS` inside namespace `ns`; throws NetnsCommandError on failure. */
function tc (ns: string, args: string[]): void {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'tc', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  if (r.error !== undefined) throw new NetnsCommandError(`tc ${args.join(' ')}`, null, null, '', { cause: r.error })
  if (r.status !== 0) throw new NetnsCommandError(`tc ${args.join(' ')} in ${ns}`, r.status, r.signal, r.stderr)
}

const RATE_RE = /^\d+(\.\d+)?(bit|kbit|mbit|gbit)$/

/** `rate` as tc writes it, in bits a second. */
export function rateBits (rate: string): number {
  const m = /^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$/.exec(rate)
  if (m === null) throw new TypeError(`a rate is a number and bit, kbit, mbit or gbit, got ${JSON.stringify(rate)}`)
  return Number(m[1]) * { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 }[m[2] as 'bit']
}

/** Where each host's cgroup goes: the v2 hierarchy (alone or beside v1), else v1's cpuacct. */
function cgroupRoot (): { dir: string, v2: boolean } | undefined {
  for (const [base, v2] of [['/sys/fs/cgroup', true], ['/sys/fs/cgroup/unified', true], ['/sys/fs/cgroup/cpuacct', false]] as const) {
    if (existsSync(`${base}/${v2 ? 'cgroup.controllers' : 'cpuacct.usage'}`)) return { dir: `${base}/${CGROUP_DIR}`, v2 }
  }
  return undefined
}

const CGROUP_DIR = 'strata-netns'

function cgroupSeconds (dir: string, v2: boolean): number {
  try {
    if (!v2) return Number(readFileSync(`${dir}/cpuacct.usage`, 'utf8').trim()) / 1e9
    const usec = /^usage_usec (\d+)$/m.exec(readFileSync(`${dir}/cpu.stat`, 'utf8'))
    return usec === null ? 0 : Number(usec[1]) / 1e6
  } catch {
    return 0
  }
}

/** Removes the cgroups of cluster `prefix` (empty once its processes are gone). */
function removeCgroups (prefix: string): void {
  const root = cgroupRoot()
  if (root === undefined || !existsSync(root.dir)) return
  for (const name of readdirSync(root.dir)) {
    if (!name.startsWith(prefix + '-')) continue
    for (let i = 0; i < 50; i++) {
      try {
        rmdirSync(`${root.dir}/${name}`)
        break
      } catch {
        // Its last processes are still exiting.
        sleepSync(20)
      }
    }
  }
}

/** Field 22 of /proc/PID/stat (start time in clock ticks), or null when PID is gone. */
function startTime (pid: number | 'self'): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may contain spaces; fields after it are plain.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

function isZombieOrGone (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return true
  }
}

function sleepSync (ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

export function listNamespaces (): string[] {
  return ip(['netns', 'list']).split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => n !== '')
}

function pidsIn (ns: string): number[] {
  try {
    return ip(['netns', 'pids', ns]).split('\n').filter((l) => l !== '').map(Number)
  } catch {
    return []
  }
}

function killQuietly (pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // Already gone.
  }
}

/**
 * Removes the namespaces of cluster `prefix` (hosts first, the switch last, so a
 * half-removed cluster is still found by its switch) after SIGKILLing every process
 * left in them. Synchronous so that it can run in an exit handler.
 */
function removeNamespaces (prefix: string, known: string[] = []): void {
  const present = new Set(listNamespaces())
  const hostRe = new RegExp(`^${prefix}-h\\d+$`)
  const hosts = [...new Set([...known, ...[...present].filter((n) => hostRe.test(n))])]
  const all = [...hosts, `${prefix}-sw`].filter((n) => present.has(n))
  for (const ns of all) for (const pid of pidsIn(ns)) killQuietly(pid, 'SIGKILL')
  for (const ns of all) {
    try {
      ip(['netns', 'del', ns])
    } catch {
      // Best effort: `cleanup` retries leftovers.
    }
  }
  removeCgroups(prefix)
}

interface Tracked {
  child: ChildProcess
  exited: Promise<void>
}

class NetnsCluster implements Cluster {
  readonly prefix: string
  readonly switchNs: string
  readonly hosts: Host[] = []
  readonly #tracked = new Set<Tracked>()
  /** Each host's cgroup directory, where it has one. */
  readonly #cgroups = new Map<string, string | undefined>()
  #destroyed = false
  #released = false

  constructor (prefix: string) {
    this.prefix = prefix
    this.switchNs = `${prefix}-sw`
  }

  build (count: number): void {
    live.add(this)
    installHandlers()
    const owner = `${ALIAS_TAG} owner=${process.pid} start=${startTime('self') ?? '?'}`
    ip(['netns', 'add', this.switchNs])
    ip(['-n', this.switchNs, 'link', 'add', BRIDGE, 'type', 'bridge'])
    ip(['-n', this.switchNs, 'link', 'set', BRIDGE, 'alias', owner])
    ip(['-n', this.switchNs, 'link', 'set', BRIDGE, 'up'])
    const cg = cgroupRoot()
    if (cg !== undefined) mkdirSync(cg.dir, { recursive: true })
    for (let i = 0; i < count; i++) {
      const name = `h${i + 1}`
      const ns = `${this.prefix}-${name}`
      const address = SUBNET_BASE + String(i + 1)
      ip(['netns', 'add', ns])
      // Both ends are created inside namespaces of ours: nothing touches the root one.
      ip(['-n', this.switchNs, 'link', 'add', name, 'type', 'veth', 'peer', 'name', HOST_IF, 'netns', ns])
      ip(['-n', this.switchNs, 'link', 'set', name, 'master', BRIDGE, 'up'])
      ip(['-n', ns, 'link', 'set', HOST_IF, 'address', macOf(i)])
      ip(['-n', ns, 'addr', 'add', `${address}/24`, 'dev', HOST_IF])
      ip(['-n', ns, 'link', 'set', HOST_IF, 'up'])
      ip(['-n', ns, 'link', 'set', 'lo', 'up'])
      const cgroup = cg === undefined ? undefined : `${cg.dir}/${ns}`
      if (cgroup !== undefined) mkdirSync(cgroup)
      this.#cgroups.set(ns, cgroup)
      this.hosts.push({
        name,
        ns,
        address,
        exec: (cmd, args = [], opts = {}) => this.#exec(ns, cmd, args, opts),
        spawn: (cmd, args = [], opts = {}) => this.#spawn(ns, cmd, args, opts).child,
        cpuSeconds: () => cgroup === undefined ? 0 : cgroupSeconds(cgroup, cg!.v2),
        linkBytes: () => {
          const [l] = JSON.parse(ip(['-j', '-s', '-n', ns, 'link', 'show', HOST_IF])) as Array<{ stats64: { rx: { bytes: number }, tx: { bytes: number } } }>
          return { rx: l!.stats64.rx.bytes, tx: l!.stats64.tx.bytes }
        }
      })
    }
    // Every host knows every other's MAC address from the start. The kernel's ARP cache
    // is one table for all namespaces, 1,024 entries by default (gc_thresh3): a full
    // mesh of 33 hosts fills it, and a host that joins later cannot resolve anybody
    // (its sends fail with ENOBUFS, its dials time out). Permanent entries are not
    // counted against that bound, and they go with the namespace.
    for (const [i, h] of this.hosts.entries()) {
      const lines = this.hosts.flatMap((o, j) => j === i ? [] : [`neigh replace ${o.address} lladdr ${macOf(j)} dev ${HOST_IF} nud permanent`])
      if (lines.length > 0) ip(['-n', h.ns, '-batch', '-'], lines.join('\n') + '\n')
    }
  }

  shape (link: LinkShape | undefined): void {
    if (link !== undefined && !RATE_RE.test(link.rate)) throw new TypeError(`link.rate must be like 200mbit, got ${JSON.stringify(link.rate)}`)
    for (const h of this.hosts) {
      // Both ends' egress: the host's sending, and the switch's sending to it.
      for (const [ns, dev] of [[h.ns, HOST_IF], [this.switchNs, h.name]] as const) {
        if (link === undefined) {
          try {
            tc(ns, ['qdisc', 'del', 'dev', dev, 'root'])
          } catch {
            // Not shaped.
          }
        } else tc(ns, ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', link.rate, 'burst', String(link.burstBytes ?? 64 * 1024), 'latency', `${link.latencyMs ?? 20}ms`])
      }
    }
  }

  #spawn (ns: string, cmd: string, args: string[], opts: HostSpawnOptions): Tracked {
    if (this.#destroyed) throw new Error(`cluster ${this.prefix} is destroyed`)
    const options: SpawnOptions = {
      cwd: opts.cwd,
      env: opts.env,
      stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'],
      // A group of its own, so that terminate() reaches a shell's children too.
      detached: true
    }
    // The command joins the host's cgroup before it starts, so everything it forks is counted.
    const cgroup = this.#cgroups.get(ns)
    const child = cgroup === undefined
      ? spawnChild('ip', ['netns', 'exec', ns, cmd, ...args], options)
      : spawnChild('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, 'ip', 'netns', 'exec', ns, cmd, ...args], options)
    const tracked: Tracked = {
      child,
      exited: new Promise((resolve) => {
        child.once('close', () => resolve())
        child.once('error', () => resolve())
      })
    }
    this.#tracked.add(tracked)
    void tracked.exited.then(() => this.#tracked.delete(tracked))
    return tracked
  }

  #exec (ns: string, cmd: string, args: string[], opts: ExecOptions): Promise<ExecResult> {
    const stdin = opts.input === undefined ? 'ignore' : 'pipe'
    const { child } = this.#spawn(ns, cmd, args, { cwd: opts.cwd, env: opts.env, stdio: [stdin, 'pipe', 'pipe'] })
    const label = `ip netns exec ${ns} ${[cmd, ...args].join(' ')}`
    return new Promise((resolve, reject) => {
      let stdout = ''
      let stderr = ''
      let spawnError: Error | undefined
      child.stdout?.setEncoding('utf8').on('data', (s: string) => { stdout += s })
      child.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s })
      child.once('error', (err) => { spawnError = err })
      if (opts.input !== undefined) child.stdin?.end(opts.input)
      const stop = (): void => { void terminate(child) }
      opts.signal?.addEventListener('abort', stop, { once: true })
      if (opts.signal?.aborted === true) stop()
      const timer = opts.timeout === undefined ? undefined : setTimeout(stop, opts.timeout)
      child.once('close', (code, signal) => {
        clearTimeout(timer)
        opts.signal?.removeEventListener('abort', stop)
        const result = { stdout, stderr, exitCode: code, signal }
        if (spawnError !== undefined) reject(new NetnsCommandError(label, null, null, stderr, { cause: spawnError }))
        else if ((code !== 0 || signal !== null) && opts.reject !== false) {
          reject(new NetnsCommandError(label, code, signal, stderr, { cause: opts.signal?.reason }))
        } else resolve(result)
      })
    })
  }

  async destroy (opts: { graceMs?: number } = {}): Promise<void> {
    if (this.#destroyed) return
    this.#destroyed = true
    const tracked = [...this.#tracked]
    await Promise.all(tracked.map(async ({ child }) => await terminate(child, opts.graceMs ?? DEFAULT_GRACE_MS)))
    this.#teardown()
  }

  /** The exit-handler path: no event loop, so no waiting on 'close' events. */
  destroySync (graceMs = 500): void {
    if (this.#destroyed) return
    this.#destroyed = true
    const pids = [...this.#tracked].map(({ child }) => child.pid).filter((p) => p !== undefined)
    for (const pid of pids) killQuietly(-pid, 'SIGTERM')
    const deadline = Date.now() + graceMs
    while (pids.some((p) => !isZombieOrGone(p)) && Date.now() < deadline) sleepSync(20)
    for (const pid of pids) killQuietly(-pid, 'SIGKILL')
    this.#teardown()
  }

  #teardown (): void {
    live.delete(this)
    if (this.#released) return
    removeNamespaces(this.prefix, this.hosts.map((h) => h.ns))
  }

  release (): void {
    this.#released = true
    this.#destroyed = true
    live.delete(this)
    for (const { child } of this.#tracked) child.unref()
    this.#tracked.clear()
    try {
      ip(['-n', this.switchNs, 'link', 'set', BRIDGE, 'alias', `${ALIAS_TAG} kept`])
    } catch {
      // The cluster is kept either way; `cleanup` would then take it for a leftover.
    }
  }
}

/**
 * SIGTERM to the child's process group, SIGKILL after `graceMs`; resolves once the
 * child has exited. For processes started with Host.spawn (which have a group).
 */
export async function terminate (child: ChildProcess, graceMs = DEFAULT_GRACE_MS): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  const pid = child.pid
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  killQuietly(-pid, 'SIGTERM')
  let timer: NodeJS.Timeout | undefined
  const timedOut = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(true), graceMs) })
  if (await Promise.race([exited.then(() => false), timedOut])) {
    killQuietly(-pid, 'SIGKILL')
    await exited
  }
  clearTimeout(timer)
  // Whatever else of the group survived its leader.
  killQuietly(-pid, 'SIGKILL')
}

const live = new Set<NetnsCluster>()
let handlersInstalled = false

function destroyAllSync (): void {
  for (const cluster of [...live]) {
    try {
      cluster.destroySync()
    } catch {
      // Nobody to report to at exit; `cleanup` handles what is left.
    }
  }
}

function installHandlers (): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', destroyAllSync)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      destroyAllSync()
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1))
    })
  }
}

/**
 * Creates a cluster of `hosts` hosts. Torn down by destroy(), and otherwise when the
 * process exits, is interrupted or terminated (also after an uncaught error). A
 * failure half-way removes what was made.
 */
export async function createCluster (init: ClusterInit): Promise<Cluster> {
  const count = init.hosts
  if (!Number.isInteger(count) || count < 1 || count > MAX_HOSTS) throw new TypeError(`hosts must be an integer from 1 to ${MAX_HOSTS}, got ${count}`)
  const prefix = init.prefix ?? `stn${process.pid}x${randomBytes(3).toString('hex')}`
  if (!PREFIX_RE.test(prefix)) throw new TypeError(`prefix must match ${PREFIX_RE}, got ${JSON.stringify(prefix)}`)
  if (listNamespaces().some((n) => n.startsWith(prefix + '-'))) throw new Error(`namespaces named ${prefix}-* already exist; pick another prefix or run: node scripts/netns.ts down ${prefix}`)
  if (init.link !== undefined && !RATE_RE.test(init.link.rate)) throw new TypeError(`link.rate must be like 200mbit, got ${JSON.stringify(init.link.rate)}`)
  const cluster = new NetnsCluster(prefix)
  try {
    cluster.build(count)
    if (init.link !== undefined) cluster.shape(init.link)
  } catch (err) {
    cluster.destroySync(0)
    throw err
  }
  return cluster
}

/** Runs `fn` with a fresh cluster and destroys it however `fn` ends. */
export async function withCluster<T> (init: ClusterInit, fn: (cluster: Cluster) => Promise<T>): Promise<T> {
  const cluster = await createCluster(init)
  try {
    return await fn(cluster)
  } finally {
    await cluster.destroy()
  }
}

export interface ClusterInfo {
  prefix: string
  /** The owner pid, or null for a kept cluster (`up`). */
  owner: number | null
  /** True when the owner process still runs, or the cluster was kept on purpose. */
  alive: boolean
  kept: boolean
  namespaces: string[]
}

/** The clusters made by this script that exist on this machine. */
export function listClusters (): ClusterInfo[] {
  const names = listNamespaces()
  const out: ClusterInfo[] = []
  for (const sw of names.filter((n) => n.endsWith('-sw'))) {
    const prefix = sw.slice(0, -3)
    let alias = ''
    try {
      const [link] = JSON.parse(ip(['-j', '-n', sw, 'link', 'show', BRIDGE])) as Array<{ ifalias?: string }>
      alias = link?.ifalias ?? ''
    } catch {
      // No bridge: not ours, or ours cut short right after `netns add` (see below).
    }
    const half = alias === '' && /^stn\d+x[0-9a-f]+$/.test(prefix)
    if (!alias.startsWith(ALIAS_TAG) && !half) continue
    const kept = alias === `${ALIAS_TAG} kept`
    // The alias names the owner's pid and start time (a reused pid is not the owner);
    // a cluster cut short has only the pid in its default prefix.
    const full = /owner=(\d+) start=(\S+)/.exec(alias)
    const owner = kept ? null : Number((full ?? /^stn(\d+)x/.exec(prefix))?.[1] ?? NaN)
    const alive = kept || (owner !== null && !Number.isNaN(owner) &&
      (full === null ? startTime(owner) !== null : startTime(owner) === full[2]))
    const namespaces = names.filter((n) => n === sw || new RegExp(`^${prefix}-h\\d+$`).test(n))
    out.push({ prefix, owner, alive, kept, namespaces })
  }
  return out
}

/** Removes cluster `prefix`: kills its processes and deletes its namespaces. */
export function removeCluster (prefix: string): void {
  if (!PREFIX_RE.test(prefix)) throw new TypeError(`prefix must match ${PREFIX_RE}, got ${JSON.stringify(prefix)}`)
  removeNamespaces(prefix)
}

/** Removes the clusters whose owner is gone (and with `all`, every cluster). */
export function cleanup (opts: { all?: boolean } = {}): string[] {
  const removed: string[] = []
  for (const c of listClusters()) {
    if (c.alive && opts.all !== true) continue
    removeNamespaces(c.prefix)
    removed.push(c.prefix)
  }
  return removed
}

function usage (): never {
  console.error('usage: node scripts/netns.ts up N [--prefix P] [--rate 200mbit] | down PREFIX | list | cleanup [--all]')
  process.exit(2)
}

async function main (argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  if (command === 'up') {
    const count = Number(rest[0])
    const at = rest.indexOf('--prefix')
    const prefix = at === -1 ? undefined : rest[at + 1]
    const r = rest.indexOf('--rate')
    const rate = r === -1 ? undefined : rest[r + 1]
    if (!Number.isInteger(count) || (at !== -1 && prefix === undefined) || (r !== -1 && rate === undefined)) usage()
    const cluster = await createCluster({ hosts: count, prefix, ...(rate !== undefined ? { link: { rate } } : {}) })
    cluster.release()
    console.log(`cluster ${cluster.prefix} (switch namespace ${cluster.switchNs}, ${SUBNET})`)
    for (const h of cluster.hosts) console.log(`${h.name}  ${h.address}  ip netns exec ${h.ns} ...`)
    console.log(`remove with: node scripts/netns.ts down ${cluster.prefix}`)
  } else if (command === 'down') {
    const prefix = rest[0]
    if (prefix === undefined) usage()
    const known = listClusters().find((c) => c.prefix === prefix)
    if (known === undefined) {
      console.error(`no cluster ${prefix}`)
      process.exit(1)
    }
    removeCluster(prefix)
    console.log(`removed ${known.namespaces.join(' ')}`)
  } else if (command === 'list') {
    for (const c of listClusters()) {
      const state = c.kept ? 'kept' : c.alive ? `owner ${c.owner}` : `leftover (owner ${c.owner ?? '?'} gone)`
      console.log(`${c.prefix}  ${c.namespaces.length - 1} hosts  ${state}`)
    }
  } else if (command === 'cleanup') {
    const removed = cleanup({ all: rest.includes('--all') })
    console.log(removed.length === 0 ? 'nothing to remove' : `removed ${removed.join(' ')}`)
  } else usage()
}

if (import.meta.main) await main(process.argv.slice(2))
