// Issue K's benchmark: what the step sandbox costs per step, against the sandbox it
// replaced (setpriv + unshare + a shell script + chroot).
//
//   node scripts/bench/sandbox.ts [--steps 40] [--reps 5] [--old fff2cd5] [--json]
//
// Each rep runs --steps trivial steps (`true`, host base, data dir masked) through
// runSandbox with the old sandbox.ts (taken from git at --old, loaded from a scratch
// copy) and with the current one, alternating which goes first. A step is timed from
// preparing its run dir to the end of runSandbox. Prints the per-step median of each
// rep's median, min and max, the ratio new/old and the milliseconds added.

import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import * as current from '../../packages/runner/src/sandbox.ts'
import { removeOnExit } from './cleanup.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'

type Sandbox = Pick<typeof current, 'prepareRunDir' | 'runSandbox'>

const flags = parseFlags(process.argv.slice(2), { steps: '40', reps: '5', old: 'fff2cd5', json: false as boolean })
const steps = Number(flags.steps)
const reps = Number(flags.reps)
const repo = fileURLToPath(new URL('../..', import.meta.url))
const cache = process.env.STRATA_BENCH_CACHE ?? '/var/tmp/strata-bench'
const scratch = `${cache}/sandbox-${process.pid}`
removeOnExit(scratch)
mkdirSync(`${scratch}/old`, { recursive: true })
mkdirSync(`${scratch}/data/runner/run`, { recursive: true })
// The old module imports only ./errors.ts: a copy beside it is enough to load it.
writeFileSync(`${scratch}/old/sandbox.ts`, execFileSync('git', ['-C', repo, 'show', `${String(flags.old)}:packages/runner/src/sandbox.ts`]))
copyFileSync(`${repo}/packages/runner/src/errors.ts`, `${scratch}/old/errors.ts`)
const old = await import(`${scratch}/old/sandbox.ts`) as Sandbox

const sink = new Writable({ write: (_c, _e, cb) => cb() })
const log = pino({ level: 'silent' })
const dataDir = `${scratch}/data`
let serial = 0

/** Milliseconds per step for `steps` trivial steps through `sb`. */
async function runSteps (sb: Sandbox): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < steps; i++) {
    const runDir = `${dataDir}/runner/run/s${serial++}`
    await mkdir(runDir)
    const t0 = performance.now()
    const lower = await sb.prepareRunDir(runDir, [], '/')
    const r = await sb.runSandbox({
      name: 'bench', runDir, lowers: [], base: '/', mask: dataDir, run: 'true', cwd: '/',
      env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' },
      output: { stdout: sink, stderr: sink, prefix: true }, killGraceMs: 1000, log
    }, lower)
    times.push(performance.now() - t0)
    if (r.exitCode !== 0) throw new Error(`a step failed: ${JSON.stringify(r)}`)
    await rm(runDir, { recursive: true, force: true })
  }
  return times
}

const samples: Record<'old' | 'new', number[]> = { old: [], new: [] }
await runSteps(current) // warm the page cache and the helper binary
await runSteps(old)
for (let rep = 0; rep < reps; rep++) {
  const order = rep % 2 === 0 ? (['old', 'new'] as const) : (['new', 'old'] as const)
  for (const which of order) {
    const times = await runSteps(which === 'old' ? old : current)
    samples[which].push(summarize(times).median)
    process.stderr.write(`rep ${rep + 1}/${reps} ${which}: ${summarize(times).median.toFixed(2)} ms/step\n`)
  }
}
rmSync(scratch, { recursive: true, force: true })

const o = summarize(samples.old)
const n = summarize(samples.new)
if (flags.json === true) {
  process.stdout.write(JSON.stringify({ steps, reps, old: o, new: n, ratio: n.median / o.median, addedMs: n.median - o.median }) + '\n')
} else {
  const row = (name: string, s: { median: number, min: number, max: number }): string[] => [name, s.median.toFixed(2), s.min.toFixed(2), s.max.toFixed(2)]
  process.stdout.write(formatTable([
    ['ms per step', 'median', 'min', 'max'],
    row(`old (${String(flags.old)}: setpriv, unshare, sh, chroot)`, o),
    row('new (strata-sandbox: pivot_root, masks, caps, seccomp)', n)
  ]) + `\nratio new/old ${(n.median / o.median).toFixed(2)}, added ${(n.median - o.median).toFixed(2)} ms per step (${steps} steps x ${reps} reps)\n`)
}
