// What a cache miss costs with a daemon: the same N-step cold pipeline (a fresh
// salt every rep, so every step misses) run by `strata run` three ways in one run:
//
//   none    no daemon: the CLI opens the store itself
//   lone    a daemon on the data dir with no peers
//   peers   a daemon connected to P other daemons (loopback, own data dirs and
//           ports), none of which has the keys
//
//   node scripts/bench/miss-cost.ts [--steps 2] [--reps 5] [--peers 8] [--json]
//
// All daemons run for the whole benchmark and the three ways take turns in every
// rep, so that the load of a shared machine falls on each alike.
// Prints medians (min, max) and the extra milliseconds per missed step against
// `none`. Targets: <= 50 ms per missed step with no peers, <= 150 ms with 8 peers.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { availableParallelism, loadavg } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { beforeRemoval, removeNow, removeOnExit } from './cleanup.ts'
import { cacheRoot } from './fixture.ts'

const strataBin = new URL('../../packages/cli/bin/strata.js', import.meta.url).pathname
const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '2' },
    reps: { type: 'string', default: '5' },
    peers: { type: 'string', default: '8' },
    json: { type: 'boolean', default: false }
  }
})
const steps = Number(values.steps)
const reps = Number(values.reps)
const peerCount = Number(values.peers)
// The environment of whoever runs this must not change the runs.
const env = { ...process.env, STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '', STRATA_BOOTSTRAP: '', STRATA_LOG_LEVEL: process.env.STRATA_BENCH_LOG_LEVEL ?? 'error' }

async function strata (args: string[], cwd?: string): Promise<{ ms: number, stdout: string }> {
  const started = performance.now()
  return await new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [strataBin, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (b: Buffer) => { stdout += b.toString() })
    p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
    p.on('error', reject)
    p.on('exit', (code) => {
      if (code !== 0) reject(new Error(`strata ${args.join(' ')} exited ${code}\n${stderr.slice(-2000)}`))
      else resolve({ ms: performance.now() - started, stdout })
    })
  })
}

const children = new Set<ChildProcess>()
beforeRemoval(() => { for (const c of children) c.kill('SIGKILL') })

async function startDaemon (dataDir: string, port: number, bootstrap: string[]): Promise<{ peerId: string }> {
  mkdirSync(dataDir, { recursive: true })
  const args = ['daemon', '--data-dir', dataDir, '--listen', `/ip4/127.0.0.1/tcp/${port}`, '--replicas', '0', ...bootstrap.flatMap((b) => ['--bootstrap', b])]
  const child = spawn(process.execPath, [strataBin, ...args], { env, stdio: ['ignore', 'ignore', 'inherit'] })
  children.add(child)
  const status = await waitStatus(dataDir, () => true)
  return { peerId: status.peerId }
}

async function waitStatus (dataDir: string, ok: (s: { peerId: string, peers: string[] }) => boolean): Promise<{ peerId: string, peers: string[] }> {
  const deadline = Date.now() + 60_000
  for (;;) {
    try {
      const s = JSON.parse((await strata(['status', '--json', '--data-dir', dataDir])).stdout) as { peerId: string, peers: string[] }
      if (ok(s)) return s
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`daemon on ${dataDir} not ready`)
    await delay(200)
  }
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return
  const done = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await done
  children.delete(child)
}

/** One cold run of the pipeline on `dataDir` with a fresh salt: its wall time. */
async function cold (work: string, dataDir: string): Promise<number> {
  const lines = [`salt: ${randomBytes(8).toString('hex')}`, 'base: host', 'steps:']
  for (let i = 0; i < steps; i++) lines.push(`  - name: s${i}`, '    run: "true"')
  writeFileSync(join(work, 'strata.yml'), lines.join('\n') + '\n')
  return (await strata(['run', '--data-dir', dataDir], work)).ms
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const fmt = (xs: number[]): string => `${median(xs).toFixed(0)} ms (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})`

const scratch = removeOnExit(join(cacheRoot(), `miss-cost-${process.pid}`))
try {
  const work = join(scratch, 'work')
  mkdirSync(work, { recursive: true })
  const basePort = 20000 + Math.floor(Math.random() * 30000)

  // Everything runs at once and the three ways take turns within each rep, so that a
  // change in the machine's load over the run falls on all three alike.
  process.stderr.write(`starting a lone daemon and a daemon with ${peerCount} peers...\n`)
  const loneDir = join(scratch, 'lone')
  await startDaemon(loneDir, basePort, [])
  const peers: string[] = []
  for (let i = 0; i < peerCount; i++) {
    const port = basePort + 1 + i
    const p = await startDaemon(join(scratch, `peer-${i}`), port, peers.length > 0 ? [peers[0]!] : [])
    peers.push(`/ip4/127.0.0.1/tcp/${port}/p2p/${p.peerId}`)
  }
  const meDir = join(scratch, 'me')
  await startDaemon(meDir, basePort + 1 + peerCount, peers)
  await waitStatus(meDir, (s) => s.peers.length >= peerCount)
  const ways = [['none', join(scratch, 'none')], ['lone', loneDir], ['peers', meDir]] as const
  const times: Record<string, number[]> = { none: [], lone: [], peers: [] }
  for (let r = 0; r < reps; r++) {
    process.stderr.write(`rep ${r + 1}/${reps}\n`)
    for (let i = 0; i < ways.length; i++) {
      const [name, dir] = ways[(r + i) % ways.length]!
      times[name]!.push(await cold(work, dir))
    }
  }
  const none = times.none!
  const withLone = times.lone!
  const withPeers = times.peers!
  for (const c of [...children]) await stop(c)

  const extra = (xs: number[]): number => (median(xs) - median(none)) / steps
  const result = {
    steps, reps, peers: peerCount,
    noneMs: median(none), loneMs: median(withLone), peersMs: median(withPeers),
    extraPerStepLoneMs: extra(withLone), extraPerStepPeersMs: extra(withPeers),
    ratioLone: median(withLone) / median(none), ratioPeers: median(withPeers) / median(none)
  }
  if (values.json === true) {
    process.stdout.write(JSON.stringify(result) + '\n')
  } else {
    process.stdout.write(`cold ${steps}-step pipeline, every step a miss, ${reps} reps (the three ways take turns), load average ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} cores\n`)
    process.stdout.write(`  no daemon            ${fmt(none)}\n`)
    process.stdout.write(`  lone daemon          ${fmt(withLone)}   x${result.ratioLone.toFixed(2)}   +${result.extraPerStepLoneMs.toFixed(0)} ms per missed step (target <= 50)\n`)
    process.stdout.write(`  daemon, ${peerCount} peers     ${fmt(withPeers)}   x${result.ratioPeers.toFixed(2)}   +${result.extraPerStepPeersMs.toFixed(0)} ms per missed step (target <= 150)\n`)
  }
} finally {
  for (const c of children) c.kill('SIGKILL')
  removeNow(scratch)
}
