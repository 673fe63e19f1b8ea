// One build per key on one VM: `strata run` processes that miss the same step while
// another builds it wait for that build (WAIT) and hit, or build it themselves once the
// builder failed, was killed or --claim-wait passed. The runs share the store through a
// daemon; the steps report to an HTTP server of the test on the host's loopback.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { bin, startDaemonProcess, strata, workDir } from './helpers.ts'

interface Gate {
  port: number
  /** How many times a step started. */
  ran: () => number
  /** Lets every step past the gate; until then only the starts in `free` pass. */
  open: () => void
}

/** Steps call /ran as they start (answered with how many did so far), then poll /go?n=N until it says go. */
async function gate (t: { after: (fn: () => Promise<void>) => void }, free: readonly number[] = []): Promise<Gate> {
  let ran = 0
  let open = false
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (url.pathname === '/ran') res.end(String(++ran))
    else res.end(open || free.includes(Number(url.searchParams.get('n'))) ? 'go' : 'wait')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(async () => {
    server.closeAllConnections()
    server.close()
    await once(server, 'close')
  })
  return { port: (server.address() as AddressInfo).port, ran: () => ran, open: () => { open = true } }
}

/** A cold pipeline of one step that waits at the gate; `then` runs after it. */
function pipeline (dir: string, g: Gate, then = 'echo x > /opt/strata-claim-cli'): void {
  writeFileSync(join(dir, 'strata.yml'), `base: host
steps:
  - name: build
    run: |
      n=$(curl -sf http://127.0.0.1:${g.port}/ran)
      until [ "$(curl -sf "http://127.0.0.1:${g.port}/go?n=$n")" = go ]; do sleep 0.05; done
      ${then}
`)
}

interface Running {
  child: ChildProcess
  out: () => string
  err: () => string
  exit: Promise<number | null>
}

function start (t: { after: (fn: () => Promise<void>) => void }, dir: string, args: string[]): Running {
  const child = spawn(process.execPath, [bin, 'run', ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '' } })
  let out = ''
  let err = ''
  child.stdout!.on('data', (b: Buffer) => { out += b.toString() })
  child.stderr!.on('data', (b: Buffer) => { err += b.toString() })
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exit
    }
  })
  return { child, out: () => out, err: () => err, exit }
}

async function until (cond: () => boolean, what: () => string): Promise<void> {
  const deadline = Date.now() + 120_000
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`gave up waiting: ${what()}`)
    await delay(25)
  }
}

interface Event { type: string, step?: string, key?: string, where?: string, holder?: string }
const events = (r: Running): Event[] => r.out().split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Event)
const WAIT_LOCAL = /^build: WAIT \(building in pid (\d+)\)$/m

test('two strata runs at once with the same cold step: one runs it, the other prints WAIT and then HITs', async (t) => {
  const dir = workDir(t, 'claimloc-cli')
  const data = join(dir, 'data')
  await startDaemonProcess(t, data)
  const g = await gate(t)
  pipeline(dir, g)
  const runs = [start(t, dir, ['--data-dir', data]), start(t, dir, ['--data-dir', data])]
  await until(() => runs.some((r) => WAIT_LOCAL.test(r.err())), () => runs.map((r) => r.err()).join('\n---\n'))
  g.open()
  const codes = await Promise.all(runs.map(async (r) => await r.exit))
  assert.deepEqual(codes, [0, 0], runs.map((r) => r.err()).join('\n---\n'))
  const waiter = runs.find((r) => WAIT_LOCAL.test(r.err()))!
  const builder = runs.find((r) => r !== waiter)!
  assert.equal(WAIT_LOCAL.exec(waiter.err())![1], String(builder.child.pid))
  assert.match(waiter.err(), /^build: WAIT \(building in pid \d+\)\nbuild: HIT local/m)
  assert.doesNotMatch(waiter.err(), /MISS/)
  assert.match(builder.err(), /^build: MISS → ran in/m)
  assert.doesNotMatch(builder.err(), /WAIT/)
  assert.equal(g.ran(), 1, 'the step ran once')
  assert.deepEqual(readdirSync(join(data, 'runner', 'claims')), [])
})

test('kill -9 of the run building a step: the waiting run builds it itself and succeeds', async (t) => {
  const dir = workDir(t, 'claimloc-cli')
  const data = join(dir, 'data')
  await startDaemonProcess(t, data)
  const g = await gate(t)
  pipeline(dir, g)
  const runs = [start(t, dir, ['--data-dir', data, '--json']), start(t, dir, ['--data-dir', data, '--json'])]
  const waiting = (r: Running): boolean => events(r).some((e) => e.type === 'wait')
  await until(() => runs.some(waiting), () => runs.map((r) => r.err()).join('\n---\n'))
  const waiter = runs.find(waiting)!
  const builder = runs.find((r) => r !== waiter)!
  assert.deepEqual(events(waiter).find((e) => e.type === 'wait'), { type: 'wait', step: 'build', key: events(waiter).find((e) => e.type === 'key')!.key, holder: String(builder.child.pid), where: 'local' })
  // Killed mid-step: the builder holds its claims (here and in the fleet) and its step has started.
  await until(() => g.ran() >= 1, () => builder.err())
  builder.child.kill('SIGKILL')
  await builder.exit
  g.open()
  assert.equal(await waiter.exit, 0, waiter.err())
  assert.deepEqual(events(waiter).map((e) => e.type).filter((type) => type !== 'capture-progress'), ['start', 'key', 'wait', 'miss', 'ran', 'captured', 'done'])
  assert.equal(g.ran(), 2)
  assert.deepEqual(readdirSync(join(data, 'runner', 'claims')), [])
})

test('a failing build: the waiting run builds the step itself', async (t) => {
  const dir = workDir(t, 'claimloc-cli')
  const data = join(dir, 'data')
  await startDaemonProcess(t, data)
  const g = await gate(t)
  // The first start fails at the gate; the second passes.
  pipeline(dir, g, '[ "$n" != 1 ] || exit 5\n      echo x > /opt/strata-claim-cli')
  const runs = [start(t, dir, ['--data-dir', data]), start(t, dir, ['--data-dir', data])]
  await until(() => runs.some((r) => WAIT_LOCAL.test(r.err())), () => runs.map((r) => r.err()).join('\n---\n'))
  g.open()
  const waiter = runs.find((r) => WAIT_LOCAL.test(r.err()))!
  const builder = runs.find((r) => r !== waiter)!
  assert.equal(await builder.exit, 5, builder.err())
  assert.equal(await waiter.exit, 0, waiter.err())
  assert.match(builder.err(), /^build: FAILED \(exit 5\)$/m)
  assert.match(waiter.err(), /^build: WAIT \(building in pid \d+\)\nbuild: MISS → ran in/m)
  assert.equal(g.ran(), 2)
})

test('--claim-wait bounds the wait: past it the run builds the step beside the other', async (t) => {
  const dir = workDir(t, 'claimloc-cli')
  const data = join(dir, 'data')
  await startDaemonProcess(t, data)
  // Only the first start is held at the gate.
  const g = await gate(t, [2])
  pipeline(dir, g)
  const first = start(t, dir, ['--data-dir', data])
  await until(() => g.ran() === 1, () => first.err())
  const second = start(t, dir, ['--data-dir', data, '--claim-wait', '1s'])
  // It ends while the first is still held at the gate.
  assert.equal(await second.exit, 0, second.err())
  assert.match(second.err(), /^build: WAIT \(building in pid \d+\)\nbuild: MISS → ran in/m)
  assert.equal(first.child.exitCode, null)
  g.open()
  assert.equal(await first.exit, 0, first.err())
  assert.equal(g.ran(), 2)
})

test('--claim-wait takes a duration, as --timeout does', (t) => {
  const dir = workDir(t, 'claimloc-cli')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: build\n    run: "true"\n')
  for (const command of [['run'], ['exec', '--name', 'build']]) {
    const r = strata([...command, '--claim-wait', 'soon', '--data-dir', join(dir, 'data'), ...(command[0] === 'exec' ? ['--', 'true'] : [])], dir)
    assert.equal(r.status, 2, r.stderr)
    assert.match(r.stderr, new RegExp(`^strata ${command[0]!}: --claim-wait: "soon" is not a duration`, 'm'))
  }
  const ok = strata(['run', '--claim-wait', '0s', '--data-dir', join(dir, 'data')], dir)
  assert.equal(ok.status, 0, ok.stderr)
})
