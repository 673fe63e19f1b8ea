// Issue G's benchmark: a graph pipeline (a `dpkg -i` of a local .deb, then `npm ci`
// and a `pip install` from a local wheel side by side, then a build that uses both
// and a test step), offline, on hosts in network namespaces (scripts/netns.ts via
// fleet-lib.ts: no route out, a cgroup per host, links shaped with tc).
//
//   node scripts/bench/graph.ts [--reps 1] [--fleet-reps 1] [--hosts 4] [--rate 1gbit] [--chain]
//                               [--no-single] [--no-fleet] [--py-modules 300] [--json] [--keep]
//
// (a) single: `strata run` on an empty store on h1 (no daemon), then again (warm): the
//     cold wall time against the sum of the steps' durations (`--json`'s done event),
//     i.e. what running branches side by side saves, and the critical path.
// (b) fleet: a `strata daemon` per host (fresh data dirs, bootstrapped to h1, no
//     replication); h1 runs the cold pipeline alone, then (fresh daemons and stores)
//     every host starts it at the same moment. The CPU seconds of all hosts' cgroups
//     (daemons and runs) in each case, and their ratio: with one build per key across
//     the fleet it is about 1x, with every host building every step about N x.
// Every measurement has its own salt, so nothing hits across them. --chain writes
// the pipeline without `use` (each step on the one before), for a strata without it.

import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { Fleet, procStats, runEvents, waitFor } from '../fleet-lib.ts'
import { cacheRoot } from './fixture.ts'
import { removeOnExit } from './cleanup.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'
import { buildCheckout, DEB_NAME, PY_NAME } from './graph-fixture.ts'
import type { Checkout } from './graph-fixture.ts'

export class RunFailedError extends Error {
  override name = 'RunFailedError'
  readonly code = 'BENCH_RUN_FAILED'
}

interface StepDecl { name: string, use: string[], cache: boolean, filter: string[], run: string }

/** The pipeline: `use` names each step's parents (in the chain form, the step before). */
export const STEPS: StepDecl[] = [
  { name: 'system', use: [], cache: true, filter: ['vendor/deb/**'], run: `dpkg -i vendor/deb/${DEB_NAME}_1.0_all.deb` },
  {
    name: 'node-deps', use: ['system'], cache: true, filter: ['package.json', 'package-lock.json', 'vendor/npm/**'],
    run: 'npm ci --offline --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=error --cache /tmp/npm-cache'
  },
  {
    name: 'py-deps', use: ['system'], cache: true, filter: ['requirements.txt', 'vendor/wheels/**'],
    run: 'python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links vendor/wheels --disable-pip-version-check --no-cache-dir -r requirements.txt'
  },
  {
    name: 'build', use: ['node-deps', 'py-deps'], cache: true, filter: ['package.json', 'tsconfig.json', 'src/**'],
    run: 'node_modules/.bin/tsc -p tsconfig.json && /opt/venv/bin/python src/build.py && strata-bench-tool > dist/tool.txt'
  },
  {
    name: 'test', use: ['build'], cache: false, filter: ['test/**', 'src/config.yml'],
    run: `node --test test/ && /opt/venv/bin/python -c "import ${PY_NAME}; assert ${PY_NAME}.total() > 0" && test -s dist/tool.txt`
  }
]

export function pipelineYaml (salt: string, chain: boolean): string {
  const lines = ['base: host', `salt: ${salt}`, 'steps:']
  for (const s of STEPS) {
    lines.push(`  - name: ${s.name}`)
    if (!chain && s.use.length > 0) lines.push(`    use: [${s.use.join(', ')}]`)
    lines.push(`    filter: [${s.filter.map((f) => JSON.stringify(f)).join(', ')}]`)
    if (!s.cache) lines.push('    cache: false')
    lines.push(`    run: ${JSON.stringify(s.run)}`)
  }
  return lines.join('\n') + '\n'
}

/** The longest chain of step durations through the graph (the chain form: their sum). */
function criticalPathMs (ms: Map<string, number>, chain: boolean): number {
  const finish = new Map<string, number>()
  let prev: string | undefined
  for (const s of STEPS) {
    const parents = chain ? (prev === undefined ? [] : [prev]) : s.use
    finish.set(s.name, Math.max(0, ...parents.map((p) => finish.get(p) ?? 0)) + (ms.get(s.name) ?? 0))
    prev = s.name
  }
  return Math.max(...finish.values())
}

type Form = 'graph' | 'chain'

/** One fleet measurement: h1 alone, or every host at once. */
interface FleetRep {
  kind: 'one' | 'all'
  /** CPU seconds of every host's cgroup together (daemons, runs and their steps). */
  cpuS: number
  perHostCpuS: number[]
  /** Of that, the daemons' own. */
  daemonsCpuS: number
  wallS: number
  runs: RunOutcome[]
}

interface SingleRep { cold: RunOutcome, warm: RunOutcome, coldCpuS: number }

interface RunOutcome {
  wallS: number
  /** The runner's own duration (done event). */
  runS: number
  steps: Map<string, { how: 'ran' | 'local' | 'peer', ms: number }>
  /** `wait` events: a step waited for another build of its key (in this process, on this host, on a peer). */
  waits: Array<{ step: string, where: string }>
}

function parseRun (stdout: string, wallS: number): RunOutcome {
  const events = runEvents(stdout)
  const done = events.find((e) => e.type === 'done') as unknown as { steps: Array<{ name: string, status: 'hit' | 'ran', durationMs: number }>, durationMs: number } | undefined
  if (done === undefined) throw new RunFailedError('no done event in the output of strata run --json')
  const source = new Map<string, 'local' | 'peer'>()
  for (const e of events) if (e.type === 'hit') source.set(e.step, e.source as 'local' | 'peer')
  const steps = new Map(done.steps.map((s) => [s.name, { how: s.status === 'ran' ? 'ran' as const : source.get(s.name) ?? 'local', ms: s.durationMs }]))
  return { wallS, runS: done.durationMs / 1000, steps, waits: events.filter((e) => e.type === 'wait').map((e) => ({ step: e.step, where: String(e.where) })) }
}

/** Cached steps the run built (ran) rather than took from a cache. */
function builtSteps (r: RunOutcome): number {
  return [...r.steps].filter(([name, s]) => s.how === 'ran' && STEPS.find((d) => d.name === name)?.cache !== false).length
}

async function strataRun (fleet: Fleet, i: number, dataDir: string, cwd: string): Promise<RunOutcome> {
  const started = process.hrtime.bigint()
  const r = await fleet.strata(i, ['run', '--json', '--data-dir', dataDir], { cwd, timeoutMs: 600_000 })
  const wallS = Number(process.hrtime.bigint() - started) / 1e9
  if (r.exitCode !== 0) {
    const hint = /unknown key.*use|"use"/i.test(r.stderr) ? ' (this strata has no `use`: pass --chain)' : ''
    throw new RunFailedError(`strata run on h${i + 1} in ${cwd} failed (${r.signal ?? `exit ${r.exitCode}`})${hint}: ${r.stderr.trim().split('\n').slice(-8).join(' | ')}`)
  }
  return parseRun(r.stdout, wallS)
}

/** A copy of the checkout with its strata.yml. */
function checkout (template: string, dest: string, salt: string, chain: boolean): string {
  cpSync(template, dest, { recursive: true })
  writeFileSync(join(dest, 'strata.yml'), pipelineYaml(salt, chain))
  return dest
}

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), {
    reps: '3', 'fleet-reps': '1', hosts: '4', rate: '1gbit', chain: false, single: true, fleet: true, 'py-modules': '300', json: false, keep: false
  })
  const reps = Number(flags.reps)
  const fleetReps = Number(flags['fleet-reps'])
  const hosts = Number(flags.hosts)
  for (const [k, v] of Object.entries({ reps, 'fleet-reps': fleetReps, hosts, 'py-modules': Number(flags['py-modules']) })) {
    if (!Number.isInteger(v) || v < 1) throw new TypeError(`--${k} wants a whole number from 1, got ${v}`)
  }
  const progress = (line: string): void => { process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`) }
  const tag = `graph-${process.pid}-${Date.now().toString(36)}`
  const work = join(cacheRoot(), `graph-${process.pid}`)
  const loadBefore = loadavg()[0]!

  // The cluster first: its exit handler must stop the daemons before the scratch space goes.
  const fleet = await Fleet.create({ hosts: flags.fleet ? hosts : 1, workDir: join(work, 'fleet'), prefix: `gbench${process.pid}`, daemonArgs: ['--replicas', '0'], logLevel: 'warn' })
  if (!flags.keep) removeOnExit(work)
  if (flags.rate !== 'none') fleet.cluster.shape({ rate: flags.rate })
  try {
    const template = join(work, 'checkout')
    const built = Date.now()
    const co: Checkout = buildCheckout(template, join(work, 'fixture-scratch'), { pyModules: Number(flags['py-modules']), debFiles: 200 })
    progress(`checkout in ${((Date.now() - built) / 1000).toFixed(1)} s: npm ${co.npm.packages} packages (${co.npm.files} files) as local tarballs${co.npm.skipped.length > 0 ? ` (left out: ${co.npm.skipped.join('; ')})` : ''}; wheel of ${co.py.modules} modules; .deb of ${co.debFiles} files`)

    // (a) one host, no daemon: cold, then warm; the chain form too, as the baseline.
    const forms: Form[] = flags.chain ? ['chain'] : ['graph', 'chain']
    const single: Record<Form, SingleRep[]> = { graph: [], chain: [] }
    if (flags.single) {
      for (let rep = 0; rep < reps; rep++) {
        for (const f of rep % 2 === 0 ? forms : [...forms].reverse()) {
          const dir = join(work, `single-${f}-${rep}`)
          const cwd = checkout(template, join(dir, 'checkout'), `${tag}-single-${f}-${rep}`, f === 'chain')
          const data = join(dir, 'data')
          mkdirSync(data, { recursive: true })
          const cpu0 = fleet.hosts[0]!.cpuSeconds()
          const cold = await strataRun(fleet, 0, data, cwd)
          const coldCpuS = fleet.hosts[0]!.cpuSeconds() - cpu0
          const ran = [...cold.steps.values()].filter((s) => s.how === 'ran').length
          if (ran !== STEPS.length) throw new RunFailedError(`the cold run (${f}) ran ${ran} of ${STEPS.length} steps`)
          const warm = await strataRun(fleet, 0, data, cwd)
          if (builtSteps(warm) > 0) throw new RunFailedError(`the warm run (${f}) ran a cached step: ${[...warm.steps].map(([n, s]) => `${n} ${s.how}`).join(', ')}`)
          single[f].push({ cold, warm, coldCpuS })
          const sum = [...cold.steps.values()].reduce((n, s) => n + s.ms, 0) / 1000
          progress(`single rep ${rep + 1}/${reps} (${f}): cold ${cold.wallS.toFixed(1)} s (steps ${[...cold.steps].map(([n, s]) => `${n} ${(s.ms / 1000).toFixed(1)}`).join(', ')}; sum ${sum.toFixed(1)} s; CPU ${coldCpuS.toFixed(1)} s), warm ${warm.wallS.toFixed(2)} s`)
        }
      }
    }

    // (b) the fleet: one host alone, then all at once, each on fresh daemons and stores.
    const fleetRuns: FleetRep[] = []
    if (flags.fleet) {
      const startDaemons = async (): Promise<void> => {
        for (let i = 0; i < hosts; i++) {
          const old = fleet.daemons[i]?.dataDir
          await fleet.stop(i)
          if (old !== undefined) rmSync(old, { recursive: true, force: true })
        }
        for (let i = 0; i < hosts; i++) fleet.start(i, { bootstrap: [0] })
        await fleet.ready(0)
        for (let i = 1; i < hosts; i++) await fleet.ready(i, { peers: 1 })
        await waitFor(`every daemon sees the other ${hosts - 1}`, 60_000, async () => {
          const peers = await Promise.all(fleet.running.map(async (i) => (await fleet.status(i)).peers.length))
          return peers.every((n) => n >= hosts - 1) ? true : undefined
        }, () => '', 500)
        // Let the start-up work (DHT refresh, identify) settle before the counters are read.
        await delay(2000)
      }
      for (let rep = 0; rep < fleetReps; rep++) {
        // The order alternates, so that drift over the run hits both alike.
        for (const kind of rep % 2 === 0 ? ['one', 'all'] as const : ['all', 'one'] as const) {
          await startDaemons()
          const runners = kind === 'one' ? [0] : Array.from({ length: hosts }, (_, i) => i)
          const salt = `${tag}-fleet-${kind}-${rep}`
          const dirs = runners.map((i) => checkout(template, join(work, `fleet-${kind}-${rep}`, `h${i + 1}`), salt, flags.chain))
          const before = fleet.hosts.map((h) => h.cpuSeconds())
          const daemonCpu = (): number => fleet.running.reduce((n, i) => n + (procStats(fleet.daemons[i]!.pid)?.cpuS ?? 0), 0)
          const daemonsBefore = daemonCpu()
          const started = process.hrtime.bigint()
          const runs = await Promise.all(runners.map(async (i, k) => await strataRun(fleet, i, fleet.daemons[i]!.dataDir, dirs[k]!)))
          const wallS = Number(process.hrtime.bigint() - started) / 1e9
          await delay(2000)
          const perHostCpuS = fleet.hosts.map((h, i) => h.cpuSeconds() - before[i]!)
          const cpuS = perHostCpuS.reduce((a, b) => a + b, 0)
          const daemonsCpuS = daemonCpu() - daemonsBefore
          fleetRuns.push({ kind, cpuS, perHostCpuS, daemonsCpuS, wallS, runs })
          const built = runs.reduce((n, r) => n + builtSteps(r), 0)
          progress(`fleet rep ${rep + 1}/${fleetReps}, ${kind === 'one' ? 'h1 alone' : `${hosts} hosts at once`}: ${wallS.toFixed(1)} s; CPU ${cpuS.toFixed(1)} s (by host ${perHostCpuS.map((c) => c.toFixed(1)).join(' ')}; daemons ${daemonsCpuS.toFixed(1)}); cached steps built ${built}; ${runs.map((r, k) => `h${runners[k]! + 1}: ${[...r.steps].map(([n, s]) => `${n} ${s.how}${r.waits.some((w) => w.step === n) ? ` after a wait (${r.waits.filter((w) => w.step === n).map((w) => w.where).join(', ')})` : ''}`).join(', ')}`).join('; ')}`)
        }
      }
    }

    const report = {
      benchmark: 'graph pipeline: parallel branches, and one build per key across a fleet',
      form: forms[0],
      cpus: cpus().length,
      loadAverage: { before: loadBefore, after: loadavg()[0]! },
      rate: flags.rate,
      checkout: co,
      single: Object.fromEntries(forms.map((f) => [f, single[f].map((s) => ({ cold: { ...s.cold, steps: Object.fromEntries(s.cold.steps) }, warm: { ...s.warm, steps: Object.fromEntries(s.warm.steps) }, coldCpuS: s.coldCpuS }))])),
      fleet: fleetRuns.map((f) => ({ ...f, runs: f.runs.map((r) => ({ ...r, steps: Object.fromEntries(r.steps) })) }))
    }
    if (flags.json) {
      console.log(JSON.stringify(report, null, 2))
      return
    }
    console.log(`graph benchmark, ${forms[0]} form; ${cpus().length} CPUs, 1-minute load ${report.loadAverage.before.toFixed(1)} before, ${report.loadAverage.after.toFixed(1)} after; links ${flags.rate === 'none' ? 'unshaped' : `${flags.rate} each way (tbf)`}`)
    console.log(`npm: ${co.npm.packages} packages, ${co.npm.files} files; wheel: ${co.py.modules} modules; .deb: ${co.debFiles} files`)
    const med = (xs: number[]): string => { const s = summarize(xs); return xs.length === 1 ? s.median.toFixed(2) : `${s.median.toFixed(2)} (${s.min.toFixed(2)}-${s.max.toFixed(2)})` }
    if (single[forms[0]!].length > 0) {
      console.log(`\n(a) one host, no daemon: medians of ${reps} (min-max); ${forms.length > 1 ? 'the graph and the chain form alternate' : 'the chain form'}`)
      const rows = [['', ...forms.map((f) => `${f} s`), ...forms.map((f) => `${f} ratio`)]]
      const row = (label: string, value: (s: SingleRep, f: Form) => number, ratio?: (s: SingleRep, f: Form) => number, ratioLabel = ''): void => {
        rows.push([label, ...forms.map((f) => med(single[f].map((s) => value(s, f)))), ...forms.map((f) => ratio === undefined ? '' : `${summarize(single[f].map((s) => ratio(s, f))).median.toFixed(2)}x${ratioLabel}`)])
      }
      const sum = (s: SingleRep): number => [...s.cold.steps.values()].reduce((n, x) => n + x.ms, 0) / 1000
      const crit = (s: SingleRep, f: Form): number => criticalPathMs(new Map([...s.cold.steps].map(([n, x]) => [n, x.ms])), f === 'chain') / 1000
      row('cold: strata run, wall', (s) => s.cold.wallS)
      row('cold: sum of the steps\' durations', sum, (s) => sum(s) / s.cold.wallS, ' the wall')
      row('cold: critical path', crit, (s, f) => crit(s, f) / s.cold.wallS, ' the wall')
      for (const st of STEPS) row(`  ${st.name}`, (s) => (s.cold.steps.get(st.name)?.ms ?? NaN) / 1000)
      row('cold: CPU (h1 cgroup)', (s) => s.coldCpuS)
      row('warm: strata run, wall', (s) => s.warm.wallS, (s) => s.warm.wallS / s.cold.wallS, ' cold')
      console.log(formatTable(rows))
      const speedUp = summarize(single[forms[0]!].map((s) => [...s.cold.steps.values()].reduce((n, x) => n + x.ms, 0) / 1000 / s.cold.wallS)).median
      console.log(`parallel speed-up (${forms[0]} form, sum of the steps / cold wall): ${speedUp.toFixed(2)}x`)
      if (forms.length > 1) console.log(`cold wall, graph vs chain form: ${summarize(single.graph.map((s, k) => s.cold.wallS / single.chain[k]!.cold.wallS)).median.toFixed(2)}x`)
    }
    if (fleetRuns.length > 0) {
      const one = fleetRuns.filter((f) => f.kind === 'one')
      const all = fleetRuns.filter((f) => f.kind === 'all')
      const builds = (f: FleetRep): number => f.runs.reduce((n, r) => n + builtSteps(r), 0)
      console.log(`\n(b) ${hosts} hosts, a daemon each: medians of ${one.length} (min-max)`)
      const peerHits = (f: FleetRep): number => f.runs.reduce((n, r) => n + [...r.steps.values()].filter((s) => s.how === 'peer').length, 0)
      const rows = [['', 'CPU s, all hosts', 'of which daemons', 'h1', 'wall s', 'cached steps built', 'peer hits']]
      for (const [label, list] of [['h1 alone', one], [`${hosts} at once`, all]] as const) {
        rows.push([label, med(list.map((f) => f.cpuS)), med(list.map((f) => f.daemonsCpuS)), med(list.map((f) => f.perHostCpuS[0]!)), med(list.map((f) => f.wallS)),
          String(summarize(list.map(builds)).median), String(summarize(list.map(peerHits)).median)])
      }
      console.log(formatTable(rows))
      const ratio = summarize(all.map((f, k) => f.cpuS / one[k]!.cpuS)).median
      console.log(`fleet CPU, ${hosts} hosts at once vs one alone: ${ratio.toFixed(2)}x (one build per key: about 1x; every host building: about ${hosts}x)`)
      // What a host costs that took every cached step from a peer: the part of the
      // fleet's CPU one build per key cannot save.
      const restorers = all.flatMap((f) => f.runs.flatMap((r, i) => builtSteps(r) === 0 ? [f.perHostCpuS[i]!] : []))
      if (restorers.length > 0) {
        const alone = summarize(one.map((f) => f.perHostCpuS[0]!)).median
        const r = summarize(restorers).median
        console.log(`a host that built no cached step: ${r.toFixed(2)} CPU s, ${(r / alone).toFixed(2)}x h1 building alone (${restorers.length} hosts)`)
      }
    }
  } finally {
    await fleet.destroy()
  }
}

if (import.meta.main) await main()
