// A soak: N daemons in network namespaces, pipelines run on random hosts with random
// changes to their inputs for a given time. Every daemon's RSS, V8 heap and open fds
// are sampled every minute; the report compares the last quarter's median with the
// first quarter's (within 10 %: flat) and counts wrong results: every run's output is
// checked against the same commands run without strata. Writes an SVG of RSS and fds
// over time, one line per daemon.
//
//   node scripts/soak.ts [--minutes 60] [--daemons 8] [--sample-s 60] [--concurrency 2]
//                        [--svg soak.svg] [--json soak.json] [--daemon-env NAME=VALUE ...]
//                        [--even-env NAME=VALUE ...]
//
// --even-env sets a variable on the even-numbered hosts only (h2, h4, ...): a comparison
// within one run, under the same load, of the daemons with it and those without.
// --json is rewritten after every sample, so a run cut short keeps what it saw.
//
// Not part of the test suite. Everything is removed on exit, failure and SIGINT.

import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { setTimeout as delay } from 'node:timers/promises'
import { anonHugePages, Fleet, median, outcomes, procStats } from './fleet-lib.ts'

const { values: opts } = parseArgs({
  options: {
    minutes: { type: 'string', default: '60' },
    daemons: { type: 'string', default: '8' },
    'sample-s': { type: 'string', default: '60' },
    concurrency: { type: 'string', default: '2' },
    pipelines: { type: 'string', default: '4' },
    svg: { type: 'string', default: 'soak.svg' },
    json: { type: 'string' },
    'daemon-env': { type: 'string', multiple: true, default: [] },
    'even-env': { type: 'string', multiple: true, default: [] }
  }
})
const MINUTES = Number(opts.minutes)
const N = Number(opts.daemons)
const SAMPLE_S = Number(opts['sample-s'])
const CONCURRENCY = Number(opts.concurrency)
const PIPELINES = Number(opts.pipelines)
for (const [k, v] of Object.entries({ minutes: MINUTES, daemons: N, 'sample-s': SAMPLE_S, concurrency: CONCURRENCY, pipelines: PIPELINES })) {
  if (!Number.isFinite(v) || v <= 0) throw new TypeError(`--${k} wants a positive number, got ${v}`)
}
function envOf (flag: string, list: string[]): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const kv of list) {
    const eq = kv.indexOf('=')
    if (eq <= 0) throw new TypeError(`--${flag} wants NAME=VALUE, got ${JSON.stringify(kv)}`)
    env[kv.slice(0, eq)] = kv.slice(eq + 1)
  }
  return env
}
const daemonEnv = envOf('daemon-env', opts['daemon-env'])
const evenEnv = envOf('even-env', opts['even-env'])
/** The environment of the daemon on host index `i` (h1 is index 0). */
const envOfHost = (i: number): NodeJS.ProcessEnv => i % 2 === 1 ? evenEnv : {}
const SEEDS = [0, 1]
/** Inputs each pipeline cycles through (hits), besides a fresh random one now and then (misses). */
const VARIANTS = 3
const FRESH = 0.2

const work = mkdtempSync('/var/tmp/strata-soak-')
process.on('exit', () => rmSync(work, { recursive: true, force: true }))
const tag = `strata-soak-${process.pid}`
const t0 = Date.now()
const log = (msg: string): void => { console.error(`[${((Date.now() - t0) / 60000).toFixed(1).padStart(5)} min] ${msg}`) }

/** The steps of pipeline `p`, writing under `root` (/opt/... in strata, a temp dir without). */
function steps (p: number, root: string): Array<{ name: string, run: string }> {
  const d = `${root}/p${p}`
  return [
    { name: 'gen', run: `mkdir -p ${d} && awk -v n=${20000 + p * 5000} '{ l = l $0 } END { for (i = 1; i <= n; i++) print l, i }' input.txt > ${d}/gen` },
    { name: 'sum', run: `sha256sum ${d}/gen | cut -d' ' -f1 > ${d}/out && wc -l < ${d}/gen >> ${d}/out` }
  ]
}

function pipelineYaml (p: number): string {
  const lines = ['base: host', `salt: ${tag}-p${p}`, 'steps:']
  for (const s of steps(p, `/opt/${tag}`)) lines.push(`  - name: ${s.name}`, '    filter: [input.txt]', `    run: ${JSON.stringify(s.run)}`)
  return lines.join('\n') + '\n'
}

/** The output of pipeline `p` on `input`, run with plain sh (no strata): the reference. */
const expectedCache = new Map<string, string>()
function expected (p: number, input: string): string {
  const k = `${p}\0${input}`
  const hit = expectedCache.get(k)
  if (hit !== undefined) return hit
  const dir = mkdtempSync(join(work, 'ref-'))
  writeFileSync(join(dir, 'input.txt'), input)
  for (const s of steps(p, join(dir, 'out'))) {
    const r = spawnSync('sh', ['-e', '-c', s.run], { cwd: dir, encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`reference run of p${p} ${s.name}: ${r.stderr}`)
  }
  const out = readFileSync(join(dir, 'out', `p${p}`, 'out'), 'utf8')
  rmSync(dir, { recursive: true, force: true })
  expectedCache.set(k, out)
  return out
}

/**
 * rssAnon: malloc and V8; anonHuge: of rssAnon, what transparent huge pages back (khugepaged's collapses among it); rssFile: mapped files' pages (LevelDB tables); arrayBuffers: Buffers, within external;
 * heapTotal: the V8 heap's pages; mallocInUse, mallocFree: glibc malloc's bytes handed out and held free;
 * v8Malloced: what V8 mallocs outside its heap; leveldb: what the store's index and the DHT's LevelDBs hold in memory (block caches, memtables), within mallocInUse;
 * dhtProviders: the DHT provider records the daemon keeps, on disk, bounded in count (doc/LIMITS.md).
 */
interface Sample { t: number, daemon: number, rss: number, rssAnon: number, anonHuge: number, rssFile: number, heap: number, heapLive: number, heapCode: number, heapTotal: number, external: number, arrayBuffers: number, mallocInUse: number, mallocFree: number, v8Malloced: number, leveldb: number, fds: number, dhtProviders: number }
const samples: Sample[] = []
const tally = { runs: 0, failed: 0, wrong: 0, unverified: 0, steps: { local: 0, peer: 0, ran: 0 } }
const failures: string[] = []

const fleet = await Fleet.create({ hosts: N, workDir: join(work, 'fleet'), daemonArgs: ['--replicas', '2'], env: daemonEnv })
let stopping = false
try {
  for (const s of SEEDS) fleet.start(s, { bootstrap: SEEDS, env: envOfHost(s) })
  for (const s of SEEDS) await fleet.ready(s)
  for (let i = SEEDS.length; i < N; i++) fleet.start(i, { bootstrap: SEEDS, env: envOfHost(i) })
  if (opts['even-env'].length > 0) log(`h2, h4, ... run with ${opts['even-env'].join(' ')}`)
  for (let i = 0; i < N; i++) await fleet.ready(i, { peers: 1, ms: 180_000 })
  log(`${N} daemons up; load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`)

  const sample = async (): Promise<void> => {
    const t = (Date.now() - t0) / 60000
    for (const i of fleet.running) {
      const p = procStats(fleet.daemons[i]!.pid)
      let heap = NaN
      let heapLive = NaN
      let heapCode = NaN
      let heapTotal = NaN
      let external = NaN
      let arrayBuffers = NaN
      let mallocInUse = NaN
      let mallocFree = NaN
      let leveldb = NaN
      let v8Malloced = NaN
      let dhtProviders = NaN
      try {
        // The heap after a full collection: what is kept, not how much garbage waits for the next one.
        const status = await fleet.status(i, { copies: false, liveHeap: true })
        const st = status.process
        heap = st.heapUsed
        heapLive = st.heapLive ?? NaN
        heapCode = st.heapCode ?? NaN
        heapTotal = st.heapTotal
        mallocInUse = st.malloc?.inUse ?? NaN
        mallocFree = st.malloc?.free ?? NaN
        v8Malloced = st.v8Malloced ?? NaN
        leveldb = st.leveldb !== undefined ? st.leveldb.index + st.leveldb.dht : NaN
        // Buffers (blocks in flight, the landed-blocks window) live outside the V8 heap.
        external = st.external
        arrayBuffers = st.arrayBuffers ?? NaN
        dhtProviders = status.dht?.providerRecords ?? NaN
      } catch {
        // Busy or restarting: the sample has no heap.
      }
      if (p !== undefined) samples.push({ t, daemon: i, rss: p.rss, rssAnon: p.rssAnon, anonHuge: anonHugePages(fleet.daemons[i]!.pid) ?? NaN, rssFile: p.rssFile, heap, heapLive, heapCode, heapTotal, external, arrayBuffers, mallocInUse, mallocFree, v8Malloced, leveldb, fds: p.fds, dhtProviders })
    }
    if (opts.json !== undefined) writeFileSync(opts.json, JSON.stringify({ tally, failures, samples }, null, 1))
  }
  const sampler = (async () => {
    while (!stopping) {
      await sample()
      const last = samples.filter((s) => s.t === samples.at(-1)?.t)
      const mb = (f: (s: Sample) => number): string => (median(last.map(f).filter((x) => !Number.isNaN(x))) / 1048576).toFixed(0)
      log(`sample: rss median ${mb((s) => s.rss)} MB (anon ${mb((s) => s.rssAnon)}, file ${mb((s) => s.rssFile)}), external ${mb((s) => s.external)} MB, heap median ${(median(last.map((s) => s.heap)) / 1048576).toFixed(0)} MB, fds median ${median(last.map((s) => s.fds))}; ${tally.runs} runs, ${tally.wrong} wrong, ${tally.failed} failed; load ${loadavg()[0]!.toFixed(1)}`)
      const until = Date.now() + SAMPLE_S * 1000
      while (!stopping && Date.now() < until) await delay(500)
    }
  })()

  const end = t0 + MINUTES * 60_000
  let seq = 0
  const busy = new Set<number>()
  const worker = async (): Promise<void> => {
    while (Date.now() < end) {
      const n = seq++
      const host = fleet.running[Math.floor(Math.random() * fleet.running.length)]!
      // One directory per pipeline (the step's cwd enters its key), used by one run at a time.
      const free = [...Array(PIPELINES).keys()].filter((q) => !busy.has(q))
      if (free.length === 0) {
        await delay(200)
        continue
      }
      const p = free[Math.floor(Math.random() * free.length)]!
      busy.add(p)
      const input = Math.random() < FRESH ? randomBytes(8).toString('hex') + '\n' : `variant-${Math.floor(Math.random() * VARIANTS)}\n`
      const dir = join(work, 'runs', `p${p}`)
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(dir, 'strata.yml'), pipelineYaml(p))
      writeFileSync(join(dir, 'input.txt'), input)
      const d = fleet.daemons[host]!
      const r = await fleet.strata(host, ['run', '--json', '--data-dir', d.dataDir], { cwd: dir, timeoutMs: 300_000 })
      tally.runs++
      if (r.exitCode !== 0) {
        tally.failed++
        failures.push(`run ${n} on h${host + 1} (p${p}): exit ${r.exitCode ?? r.signal}: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`)
      } else {
        const got = outcomes(r.stdout)
        for (const o of got.values()) tally.steps[o.how]++
        const last = got.get('sum')
        let out: string | undefined
        if (last?.how === 'ran' && last.layer === undefined) {
          // The step ran and its capture failed (the daemon went away): the build went on
          // uncached, and its output went with the run's upper dir. Nothing to check.
          tally.unverified++
          failures.push(`run ${n} on h${host + 1} (p${p}): the last step ran uncached (its capture failed): not checked`)
          busy.delete(p)
          continue
        }
        try {
          out = readFileSync(join(d.dataDir, 'layers', last!.layer!, 'opt', tag, `p${p}`, 'out'), 'utf8')
        } catch (err) {
          failures.push(`run ${n} on h${host + 1}: no output: ${(err as Error).message}`)
        }
        if (out !== expected(p, input)) {
          tally.wrong++
          failures.push(`run ${n} on h${host + 1} (p${p}, ${JSON.stringify(input.trim())}): ${JSON.stringify(out)} != ${JSON.stringify(expected(p, input))}`)
        }
      }
      busy.delete(p)
    }
  }
  await Promise.all([...Array(CONCURRENCY)].map(async () => await worker()))
  stopping = true
  for (const i of fleet.running) {
    const st = (await fleet.status(i, { copies: false }).catch(() => undefined))?.process
    if (st?.trims !== undefined) log(`h${i + 1}: ${st.trims.runs} malloc trims (${st.trims.released} gave pages back), ${st.trims.ms.toFixed(0)} ms in all`)
    if (st?.hugePages !== undefined) log(`h${i + 1}: huge pages on for ${st.hugePages.bursts} bursts, ${(st.hugePages.msOn / 1000).toFixed(0)} s in all`)
  }
  await sampler
  await sample()
} finally {
  stopping = true
  await fleet.destroy()
}

// The report: first quarter against last quarter, per daemon.
const span = Math.max(...samples.map((s) => s.t))
const firstQ = samples.filter((s) => s.t <= span / 4)
const lastQ = samples.filter((s) => s.t >= span * 3 / 4)
const rows: string[] = []
const over: string[] = []
for (const metric of ['rss', 'rssAnon', 'anonHuge', 'rssFile', 'heapLive', 'heapCode', 'heap', 'heapTotal', 'external', 'arrayBuffers', 'mallocInUse', 'mallocFree', 'v8Malloced', 'leveldb', 'fds', 'dhtProviders'] as const) {
  for (let i = 0; i < N; i++) {
    const a = median(firstQ.filter((s) => s.daemon === i).map((s) => s[metric]).filter((x) => !Number.isNaN(x)))
    const b = median(lastQ.filter((s) => s.daemon === i).map((s) => s[metric]).filter((x) => !Number.isNaN(x)))
    const change = (b - a) / a
    // The criterion is RSS, the live heap and fds. The rest says where a change is: the parts of RSS,
    // the live heap's compiled code (it grows as V8 optimizes more), the heap as sampled (live data plus garbage not yet collected: it swings with the collector's pace),
    // the V8 heap's pages, external, malloc's bytes in use and free, V8's own mallocs, LevelDB's caches, the DHT's provider records.
    if (['rss', 'heapLive', 'fds'].includes(metric) && Math.abs(change) > 0.1) over.push(`${metric} on h${i + 1} (${change > 0 ? '+' : ''}${(change * 100).toFixed(1)} %)`)
    const fmt = (x: number): string => metric === 'fds' || metric === 'dhtProviders' ? String(x) : `${(x / 1048576).toFixed(1)} MB`
    rows.push(`${metric.padEnd(12)} h${String(i + 1).padEnd(3)} ${fmt(a).padStart(10)} ${fmt(b).padStart(10)} ${(change * 100).toFixed(1).padStart(7)} %`)
  }
}
console.log(`\nsoak: ${N} daemons, ${MINUTES} min, ${tally.runs} runs (${tally.failed} failed, ${tally.wrong} wrong results, ${tally.unverified} ran uncached and not checked); steps: ${tally.steps.local} local hits, ${tally.steps.peer} peer hits, ${tally.steps.ran} ran; load at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}`)
console.log(`first quarter (t <= ${(span / 4).toFixed(1)} min) vs last quarter (t >= ${(span * 3 / 4).toFixed(1)} min), medians per daemon:`)
console.log(`${'what'.padEnd(17)} ${'first'.padStart(10)} ${'last'.padStart(10)} ${'change'.padStart(9)}`)
for (const r of rows) console.log(r)
console.log(over.length === 0 ? 'flat: every daemon within 10 %' : `NOT flat, past 10 %: ${over.join(', ')}`)
for (const f of failures.slice(0, 20)) console.log(`  ${f}`)
writeFileSync(opts.svg, svg(samples, N))
console.log(`plot: ${opts.svg}`)
if (opts.json !== undefined) writeFileSync(opts.json, JSON.stringify({ tally, failures, samples }, null, 1))
process.exitCode = tally.wrong === 0 && tally.failed === 0 ? 0 : 1

/** Two panels, RSS (MB) and open fds against minutes, one polyline per daemon. */
function svg (data: Sample[], daemons: number): string {
  const W = 800
  const H = 300
  const M = { l: 60, r: 20, t: 30, b: 40 }
  const tMax = Math.max(1e-9, ...data.map((s) => s.t))
  const panel = (title: string, y0: number, value: (s: Sample) => number, unit: string): string => {
    const vals = data.map(value)
    const vMax = Math.max(1, ...vals) * 1.1
    const x = (t: number): number => M.l + (t / tMax) * (W - M.l - M.r)
    const y = (v: number): number => y0 + M.t + (1 - v / vMax) * (H - M.t - M.b)
    const out = [`<text x="${W / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14">${title}</text>`]
    out.push(`<line x1="${M.l}" y1="${y(0)}" x2="${W - M.r}" y2="${y(0)}" stroke="black"/><line x1="${M.l}" y1="${y(0)}" x2="${M.l}" y2="${y(vMax)}" stroke="black"/>`)
    for (let k = 0; k <= 4; k++) {
      const v = (vMax / 4) * k
      out.push(`<text x="${M.l - 5}" y="${y(v) + 4}" text-anchor="end" font-size="10">${v.toFixed(0)}</text>`)
      const t = (tMax / 4) * k
      out.push(`<text x="${x(t)}" y="${y(0) + 14}" text-anchor="middle" font-size="10">${t.toFixed(1)}</text>`)
    }
    out.push(`<text x="${W / 2}" y="${y(0) + 30}" text-anchor="middle" font-size="11">minutes</text><text x="12" y="${y(vMax / 2)}" font-size="11" transform="rotate(-90 12 ${y(vMax / 2)})">${unit}</text>`)
    for (let i = 0; i < daemons; i++) {
      const pts = data.filter((s) => s.daemon === i).map((s) => `${x(s.t).toFixed(1)},${y(value(s)).toFixed(1)}`).join(' ')
      out.push(`<polyline fill="none" stroke="hsl(${(i * 360) / daemons},70%,40%)" stroke-width="1.5" points="${pts}"><title>h${i + 1}</title></polyline>`)
    }
    return out.join('\n')
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${2 * H}" viewBox="0 0 ${W} ${2 * H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${2 * H}" fill="white"/>`,
    panel('RSS per daemon', 0, (s) => s.rss / 1048576, 'MB'),
    panel('open fds per daemon', H, (s) => s.fds, 'fds'),
    '</svg>\n'
  ].join('\n')
}
