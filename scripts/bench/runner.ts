// The step runner on a real workload: an `apt-get install` step and an `npm ci` step
// (the npm-app fixture, ~550 packages), each measured three ways in the same run:
//
//   bare   the command with no strata (apt-get in a throwaway overlay of /, so the
//          host is left as it was; npm ci in a scratch copy of the app)
//   cold   `strata run` on an empty store: MISS, run + capture
//   warm   `strata run` again: HIT local for every step
//
//   node scripts/bench/runner.ts [--reps N] [--json]
//
// Needs root, the npm registry and a Debian mirror (both steps download). Targets:
// capture adds <= 15% to the cold run; a warm run of the whole pipeline < 1 s.
import { execFileSync, spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { cacheRoot, fixtureDir } from './fixture.ts'
import { removeNow, removeOnExit } from './cleanup.ts'

const APT_PACKAGES = ['ripgrep', 'fd-find', 'shellcheck', 'tree', 'git-lfs']
const strataBin = new URL('../../packages/cli/bin/strata.js', import.meta.url).pathname

const { values } = parseArgs({ options: { reps: { type: 'string', default: '3' }, json: { type: 'boolean', default: false } } })
const reps = Number(values.reps)

function run (cmd: string, args: string[], opts: { cwd?: string, env?: NodeJS.ProcessEnv } = {}): Promise<{ ms: number, stdout: string }> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (b: Buffer) => { stdout += b.toString() })
    p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
    p.on('error', reject)
    p.on('exit', (code) => {
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}\n${stderr.slice(-2000)}`))
      else resolve({ ms: performance.now() - started, stdout })
    })
  })
}

const aptScript = `apt-get install -y -q --no-install-recommends ${APT_PACKAGES.join(' ')} >/dev/null && apt-get clean`
const npmScript = 'npm ci --ignore-scripts --no-audit --no-fund --loglevel=error'

/** apt-get in a throwaway overlay of / in a private mount namespace: the bare baseline. */
async function bareApt (scratch: string): Promise<number> {
  const d = join(scratch, `bare-apt-${Date.now()}`)
  mkdirSync(d, { recursive: true })
  const setup = [
    'set -e', `cd ${d}`, 'mkdir -p u w m',
    'mount -t overlay overlay -o lowerdir=/,upperdir=u,workdir=w,redirect_dir=off,metacopy=off,index=off m',
    'mount -t proc proc m/proc', 'mount --rbind /dev m/dev', 'mount --rbind /sys m/sys', 'mount -t tmpfs tmpfs m/tmp',
    `chroot m /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive /bin/sh -e -c '${aptScript}'`
  ].join('\n')
  const { ms } = await run('unshare', ['--mount', '--propagation', 'private', '/bin/sh', '-c', setup])
  removeNow(d)
  return ms
}

async function bareNpm (scratch: string): Promise<number> {
  const d = join(scratch, `bare-npm-${Date.now()}`)
  mkdirSync(d, { recursive: true })
  for (const f of ['package.json', 'package-lock.json']) copyFileSync(join(fixtureDir('npm-app'), f), join(d, f))
  const { ms } = await run('/bin/sh', ['-e', '-c', npmScript], { cwd: d, env: { ...process.env, npm_config_cache: join(d, '.npm-cache') } })
  removeNow(d)
  return ms
}

interface StrataRun { wallMs: number, steps: Record<string, { ranMs?: number, captureMs?: number, hitMs?: number, size?: number }> }

async function strataRun (app: string, data: string): Promise<StrataRun> {
  const { ms, stdout } = await run(process.execPath, [strataBin, 'run', '--data-dir', data, '--json'], { cwd: app })
  const steps: StrataRun['steps'] = {}
  for (const line of stdout.trim().split('\n')) {
    const e = JSON.parse(line) as { type: string, step?: string, durationMs?: number, size?: number }
    if (e.step === undefined) continue
    const s = (steps[e.step] ??= {})
    if (e.type === 'ran') s.ranMs = e.durationMs
    if (e.type === 'captured') { s.captureMs = e.durationMs; s.size = e.size }
    if (e.type === 'hit') s.hitMs = e.durationMs
  }
  return { wallMs: ms, steps }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const scratch = removeOnExit(join(cacheRoot(), `runner-${process.pid}`))
mkdirSync(scratch, { recursive: true })
const app = join(scratch, 'app')
mkdirSync(app)
for (const f of ['package.json', 'package-lock.json']) copyFileSync(join(fixtureDir('npm-app'), f), join(app, f))
writeFileSync(join(app, 'strata.yml'), [
  'base: host',
  'steps:',
  '  - name: apt',
  `    run: ${aptScript}`,
  '    env: { DEBIAN_FRONTEND: noninteractive }',
  '  - name: npm',
  `    run: ${npmScript}`,
  '    inputs: [package.json, package-lock.json]',
  '    env: { npm_config_cache: /tmp/npm-cache }',
  ''
].join('\n'))

const rows: Array<{ bareApt: number, bareNpm: number, cold: StrataRun, warm: StrataRun }> = []
for (let r = 0; r < reps; r++) {
  const data = join(scratch, `data-${r}`)
  const row = { bareApt: await bareApt(scratch), bareNpm: await bareNpm(scratch), cold: await strataRun(app, data), warm: { wallMs: 0, steps: {} } as StrataRun }
  row.warm = await strataRun(app, data)
  execFileSync('rm', ['-rf', join(app, 'node_modules')])
  removeNow(data)
  rows.push(row)
  if (!values.json) process.stderr.write(`rep ${r + 1}/${reps} done\n`)
}

const m = (f: (row: typeof rows[number]) => number): number => median(rows.map(f))
const result = {
  reps,
  bare: { aptMs: m((x) => x.bareApt), npmMs: m((x) => x.bareNpm) },
  cold: {
    wallMs: m((x) => x.cold.wallMs),
    aptRanMs: m((x) => x.cold.steps.apt?.ranMs ?? NaN),
    aptCaptureMs: m((x) => x.cold.steps.apt?.captureMs ?? NaN),
    aptLayerBytes: m((x) => x.cold.steps.apt?.size ?? NaN),
    npmRanMs: m((x) => x.cold.steps.npm?.ranMs ?? NaN),
    npmCaptureMs: m((x) => x.cold.steps.npm?.captureMs ?? NaN),
    npmLayerBytes: m((x) => x.cold.steps.npm?.size ?? NaN)
  },
  warm: { wallMs: m((x) => x.warm.wallMs), aptHitMs: m((x) => x.warm.steps.apt?.hitMs ?? NaN), npmHitMs: m((x) => x.warm.steps.npm?.hitMs ?? NaN) }
}
const bareTotal = result.bare.aptMs + result.bare.npmMs
const captureTotal = result.cold.aptCaptureMs + result.cold.npmCaptureMs
const ratios = {
  coldOverBare: result.cold.wallMs / bareTotal,
  captureShareOfCold: captureTotal / result.cold.wallMs,
  captureOverBare: captureTotal / bareTotal,
  warmOverBare: result.warm.wallMs / bareTotal
}
if (values.json) {
  console.log(JSON.stringify({ ...result, ratios }))
} else {
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`
  console.log(`step runner, medians of ${reps} runs (apt: ${APT_PACKAGES.join(' ')}; npm ci of the npm-app fixture)`)
  console.log(`  bare         apt ${s(result.bare.aptMs)}   npm ${s(result.bare.npmMs)}   total ${s(bareTotal)}`)
  console.log(`  strata cold  apt ran ${s(result.cold.aptRanMs)} + capture ${s(result.cold.aptCaptureMs)} (${(result.cold.aptLayerBytes / 1e6).toFixed(1)} MB)   npm ran ${s(result.cold.npmRanMs)} + capture ${s(result.cold.npmCaptureMs)} (${(result.cold.npmLayerBytes / 1e6).toFixed(1)} MB)   whole run ${s(result.cold.wallMs)}`)
  console.log(`  strata warm  whole run ${s(result.warm.wallMs)} (apt hit ${s(result.warm.aptHitMs)}, npm hit ${s(result.warm.npmHitMs)})`)
  console.log(`  ratios       cold/bare ${ratios.coldOverBare.toFixed(2)}x   capture/bare ${(ratios.captureOverBare * 100).toFixed(1)}%   warm/bare ${ratios.warmOverBare.toFixed(3)}x`)
}
