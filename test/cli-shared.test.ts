import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { bin, strata, workDir } from './helpers.ts'

interface Run { exited: Promise<{ status: number | null, stderr: string }> }

function startRun (t: { after: (fn: () => Promise<void>) => void }, cwd: string, data: string): Run {
  const p = spawn(process.execPath, [bin, 'run', '--data-dir', data], { cwd, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '' } })
  let stderr = ''
  p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
  const exited = new Promise<{ status: number | null, stderr: string }>((resolve) => p.on('exit', (status) => resolve({ status, stderr })))
  t.after(async () => {
    if (p.exitCode === null && p.signalCode === null) {
      p.kill('SIGKILL')
      await exited
    }
  })
  return { exited }
}

/** The pid of the process whose command line is exactly `args`, if one runs now. */
function pidOf (args: string[]): number | undefined {
  const want = args.join('\0') + '\0'
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8') === want) return Number(name)
    } catch {
      // gone meanwhile
    }
  }
  return undefined
}

/** Waits for the step's `sleep` to run; bounded so that a run that never gets there fails the test instead of hanging it. */
async function stepRunning (args: string[], run: Run, what: string): Promise<number> {
  let ended = false
  void run.exited.then(() => { ended = true })
  for (let i = 0; ; i++) {
    const pid = pidOf(args)
    if (pid !== undefined) return pid
    if (ended) throw new Error(`${what} ended before its step ran: ${(await run.exited).stderr}`)
    if (i > 1200) throw new Error(`${what}'s step did not start within a minute: it waits for the other run`)
    await delay(50)
  }
}

test('two strata runs at once on one data dir run their steps side by side, and read-only commands answer meanwhile', async (t) => {
  const dir = workDir(t, 'share-cli')
  const data = join(dir, 'data')
  // Each step sleeps until the test ends it: run A's step is still running when run B's starts, or B never starts.
  const sleeps = ['a', 'b'].map((n) => ({ n, args: ['sleep', `${600 + randomInt(1000)}.${randomInt(1_000_000)}`] }))
  for (const { n, args } of sleeps) {
    mkdirSync(join(dir, n))
    writeFileSync(join(dir, n, 'strata.yml'), [
      'base: host',
      'steps:',
      `  - name: ${n}`,
      '    filter: []',
      `    run: echo ${n} > /opt/strata-share-${n} && { ${args.join(' ')} || true; }`,
      ''
    ].join('\n'))
  }
  t.after(() => {
    for (const { args } of sleeps) {
      const pid = pidOf(args)
      if (pid !== undefined) process.kill(pid, 'SIGKILL')
    }
  })
  const a = startRun(t, join(dir, 'a'), data)
  const pidA = await stepRunning(sleeps[0]!.args, a, 'run a')
  const b = startRun(t, join(dir, 'b'), data)
  const pidB = await stepRunning(sleeps[1]!.args, b, 'run b')
  assert.equal(pidOf(sleeps[0]!.args), pidA, 'run a\'s step ended before run b\'s started')

  // While both steps run, nothing waits for them.
  const layers = strata(['layers', '--data-dir', data, '--wait-timeout', '20s'])
  assert.equal(layers.status, 0, layers.stderr)
  assert.doesNotMatch(layers.stderr, /waiting/)
  const gc = strata(['gc', '--max-size', '1T', '--dry-run', '--data-dir', data])
  assert.equal(gc.status, 0, gc.stderr)
  const why = strata(['why', 'a', '--data-dir', data, '--wait-timeout', '20s'], join(dir, 'a'))
  assert.equal(why.status, 0, why.stderr)
  assert.match(why.stdout, /^a: would MISS: never ran here$/m)

  // Both capture at once.
  process.kill(pidA, 'SIGTERM')
  process.kill(pidB, 'SIGTERM')
  const [ra, rb] = await Promise.all([a.exited, b.exited])
  assert.equal(ra.status, 0, ra.stderr)
  assert.equal(rb.status, 0, rb.stderr)
  for (const r of [ra, rb]) {
    assert.match(r.stderr, /^[ab]: MISS → ran in/m)
    assert.doesNotMatch(r.stderr, /waiting/)
  }
  const listed = strata(['layers', '--json', '--data-dir', data])
  assert.equal(listed.status, 0, listed.stderr)
  assert.equal(listed.stdout.trim().split('\n').length, 2, listed.stdout)
  const verified = strata(['verify', '--data-dir', data])
  assert.equal(verified.status, 0, verified.stdout + verified.stderr)
  assert.equal((verified.stdout.match(/ ok /g) ?? []).length, 2, verified.stdout)
  // Each hits now, run one after the other.
  for (const { n } of sleeps) {
    const again = strata(['run', '--data-dir', data], join(dir, n))
    assert.equal(again.status, 0, again.stderr)
    assert.match(again.stderr, new RegExp(`^${n}: HIT local`, 'm'))
  }
})
