// The fan-out that once ended with a consumer daemon dead of V8 heap exhaustion, run
// under a heap limit that would catch a repeat: one producer makes a large layer of
// incompressible bytes, N consumers restore it at once (they split it and serve each
// other), and one consumer is killed -9 half-way. Every daemon runs with
// --max-old-space-size; the script samples each one's heap and RSS every second and
// fails when a daemon dies or a consumer's run fails.
//
//   node scripts/fanout-heap.ts [--consumers 8] [--mb 96] [--heap-mb 256]

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { setTimeout as delay } from 'node:timers/promises'
import { Fleet, outcomes, procStats } from './fleet-lib.ts'

const { values: opts } = parseArgs({
  options: {
    consumers: { type: 'string', default: '8' },
    mb: { type: 'string', default: '96' },
    'heap-mb': { type: 'string', default: '256' }
  }
})
const C = Number(opts.consumers)
const MB = Number(opts.mb)
const HEAP = Number(opts['heap-mb'])
const work = mkdtempSync('/var/tmp/strata-fanout-heap-')
process.on('exit', () => rmSync(work, { recursive: true, force: true }))
const fleet = await Fleet.create({
  hosts: C + 1,
  workDir: join(work, 'fleet'),
  daemonArgs: ['--replicas', '0'],
  env: { NODE_OPTIONS: `--max-old-space-size=${HEAP}` }
})
const peak = new Map<number, { rss: number, heap: number }>()
let died: string[]
let sampling = true
try {
  for (let i = 0; i <= C; i++) fleet.start(i, { bootstrap: [0] })
  for (let i = 0; i <= C; i++) await fleet.ready(i, { peers: 1, ms: 120_000 })
  const tag = `strata-fanout-${process.pid}`
  writeFileSync(join(work, 'strata.yml'), ['base: host', `salt: ${tag}`, 'steps:', '  - name: big', '    filter: []',
    `    run: mkdir -p /opt/${tag} && head -c ${MB}M /dev/urandom > /opt/${tag}/blob`, ''].join('\n'))
  const made = await fleet.strata(0, ['run', '--json', '--data-dir', fleet.daemons[0]!.dataDir], { cwd: work })
  if (made.exitCode !== 0) throw new Error(`producer: ${made.stderr}`)
  console.error(`producer made ${MB} MB; ${C} consumers restore it, heap limit ${HEAP} MB, load ${loadavg()[0]!.toFixed(1)}`)

  const sampler = (async () => {
    while (sampling) {
      for (let i = 0; i <= C; i++) {
        const d = fleet.daemons[i]
        if (d === undefined) continue
        const p = procStats(d.pid)
        let heap = 0
        try {
          heap = (await fleet.status(i, { ms: 5000 })).process.heapUsed
        } catch {
          // Busy: no heap this round.
        }
        const was = peak.get(i) ?? { rss: 0, heap: 0 }
        peak.set(i, { rss: Math.max(was.rss, p?.rss ?? 0), heap: Math.max(was.heap, heap) })
      }
      await delay(1000)
    }
  })()
  const victim = C
  const runs = [...Array(C).keys()].map(async (k) => await fleet.strata(k + 1, ['run', '--json', '--data-dir', fleet.daemons[k + 1]!.dataDir], { cwd: work, timeoutMs: 600_000 }))
  // Kill one consumer once it has some of the layer: the others lose a peer sharing the fetch.
  await delay(3000)
  await fleet.kill9(victim)
  const results = await Promise.all(runs)
  sampling = false
  await sampler
  died = fleet.running.length === C ? [] : [...Array(C + 1).keys()].filter((i) => i !== victim && fleet.daemons[i] === undefined).map((i) => `h${i + 1}: ${fleet.logTail(i)}`)
  for (const [k, r] of results.entries()) {
    if (k + 1 === victim) continue
    const got = outcomes(r.stdout).get('big')
    console.log(`h${k + 2}: exit ${r.exitCode}, ${got?.how ?? 'none'}`)
  }
  console.log(`\npeak per daemon (heap limit ${HEAP} MB; load ${loadavg().map((x) => x.toFixed(1)).join(' ')}):`)
  for (const [i, p] of [...peak].sort((a, b) => a[0] - b[0])) console.log(`  h${i + 1}${i === 0 ? ' (producer)' : i === victim ? ' (killed)' : ''}: heap ${(p.heap / 1048576).toFixed(0)} MB, rss ${(p.rss / 1048576).toFixed(0)} MB`)
  const failed = results.filter((r, k) => k + 1 !== victim && r.exitCode !== 0).length
  console.log(died.length === 0 && failed === 0 ? 'no daemon died; every surviving consumer\'s run completed' : `FAILED: ${died.length} daemons died, ${failed} runs failed\n${died.join('\n')}`)
  process.exitCode = died.length === 0 && failed === 0 ? 0 : 1
} finally {
  sampling = false
  await fleet.destroy()
}
