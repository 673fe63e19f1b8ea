// What the daemon's scavenge pacer changes in V8: full collections set off by
// block-sized buffers that die young, left alone (the baseline) and paced.
//
//   node scripts/bench/scavenge.ts [--reps 3] [--json]
//
// Each repetition runs two children with --expose-gc and a 16 MiB semi-space; each
// allocates 5000 blocks of 64 KiB and a copy of each (640 MiB of buffers) beside an
// old generation with something in it, the paced one telling the process's pacer
// (packages/daemon/src/scavenge.ts) about every block. Prints the collections by kind.

import { spawnSync } from 'node:child_process'
import { PerformanceObserver, constants } from 'node:perf_hooks'
import { setImmediate as tick } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

const args = process.argv.slice(2)

if (args[0] === '--child') {
  const paced = args[1] === 'paced'
  const { scavenges } = await import('../../packages/daemon/src/scavenge.ts')
  const counts = { major: 0, minor: 0 }
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as { detail: { kind: number } }).detail.kind
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) counts.major++
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) counts.minor++
    }
  }).observe({ entryTypes: ['gc'] })
  const live = Array.from({ length: 100_000 }, (_, i) => ({ i, name: `entry-${i}` }))
  let sum = 0
  for (let i = 0; i < 5000; i++) {
    const read = Buffer.allocUnsafe(64 * 1024)
    read[0] = i
    const block = Buffer.from(read)
    sum += block[0]!
    if (paced) scavenges.moved(block.length)
    if (i % 64 === 0) await tick()
  }
  await new Promise((resolve) => setTimeout(resolve, 50))
  process.stdout.write(JSON.stringify({ ...counts, runs: scavenges.runs, live: live.length, sum }) + '\n')
  process.exit(0)
}

const reps = Number(args[args.indexOf('--reps') + 1] ?? 3) || 3
const json = args.includes('--json')
const self = fileURLToPath(import.meta.url)

function child (mode: 'paced' | 'unpaced'): { major: number, minor: number, runs: number } {
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=16', self, '--child', mode], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`the ${mode} child failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as { major: number, minor: number, runs: number }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const rows: Record<string, { major: number[], minor: number[] }> = { unpaced: { major: [], minor: [] }, paced: { major: [], minor: [] } }
for (let i = 0; i < reps; i++) {
  for (const mode of ['unpaced', 'paced'] as const) {
    const c = child(mode)
    rows[mode]!.major.push(c.major)
    rows[mode]!.minor.push(c.minor)
  }
  process.stderr.write(`rep ${i + 1}/${reps}\n`)
}
const base = median(rows.unpaced!.major)
const out = Object.entries(rows).map(([mode, r]) => ({
  mode, major: median(r.major), majorMin: Math.min(...r.major), majorMax: Math.max(...r.major), minor: median(r.minor), majorVsUnpaced: base === 0 ? null : median(r.major) / base
}))
if (json) {
  process.stdout.write(JSON.stringify(out) + '\n')
} else {
  process.stdout.write('mode      full GCs (median, min-max)   scavenges   x unpaced\n')
  for (const r of out) process.stdout.write(`${r.mode.padEnd(9)} ${String(r.major).padStart(4)} (${r.majorMin}-${r.majorMax})${' '.repeat(20)}${String(r.minor).padStart(6)}   ${r.majorVsUnpaced?.toFixed(2) ?? '-'}\n`)
}
