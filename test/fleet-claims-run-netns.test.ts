import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Fleet, bin, outcomes, runEvents, waitFor } from '../scripts/fleet-lib.ts'
import { workDir } from './helpers.ts'

// The scope settings of whoever runs the tests must not leak into the runs.
const HERMETIC: NodeJS.ProcessEnv = { STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '', STRATA_BOOTSTRAP: '' }

/** Two daemons in network namespaces that hear each other's claims. */
async function twoHosts (t: { after: (fn: () => Promise<void>) => void }, dir: string, daemonArgs: string[] = []): Promise<Fleet> {
  const fleet = await Fleet.create({ hosts: 2, workDir: join(dir, 'fleet'), prefix: `claimnet${randomBytes(3).toString('hex')}`, daemonArgs: ['--replicas', '0', ...daemonArgs] })
  t.after(async () => { await fleet.destroy() })
  fleet.start(0)
  fleet.start(1, { bootstrap: [0] })
  for (const i of [0, 1]) await fleet.ready(i, { peers: 1 })
  for (const i of [0, 1]) await waitFor(`h${i + 1} hears the other's claims`, 30_000, async () => (await fleet.status(i)).claims.subscribers >= 1 ? true : undefined)
  return fleet
}

/** A chain of three cached steps, each a few seconds long, each checking what the one below made. */
function slowPipeline (tag: string): string {
  return [
    'base: host',
    `salt: ${tag}`,
    'steps:',
    '  - name: one',
    '    filter: []',
    `    run: sleep 2 && mkdir -p /opt/${tag} && seq 1 200000 > /opt/${tag}/one`,
    '  - name: two',
    '    filter: []',
    `    run: sleep 2 && test -s /opt/${tag}/one && sha256sum /opt/${tag}/one > /opt/${tag}/two`,
    '  - name: three',
    '    filter: []',
    `    run: sleep 2 && sha256sum -c /opt/${tag}/two > /opt/${tag}/three`,
    ''
  ].join('\n')
}

/** Both VMs run the pipeline at once; each step must run on one and hit from it on the other. */
async function coldOnTwo (fleet: Fleet, dir: string, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const tag = `strata-claimnet-${process.pid}-${Date.now()}`
  writeFileSync(join(dir, 'strata.yml'), slowPipeline(tag))
  const runs = await Promise.all([0, 1].map(async (i) => await fleet.strata(i, ['run', '--json', '--data-dir', fleet.daemons[i]!.dataDir], { cwd: dir, timeoutMs: 240_000, env })))
  for (const r of runs) assert.equal(r.exitCode, 0, r.stderr)
  const seen = runs.map((r) => outcomes(r.stdout))
  const ran = [0, 0]
  for (const step of ['one', 'two', 'three']) {
    const how = seen.map((o) => o.get(step)?.how)
    assert.deepEqual([...how].sort(), ['peer', 'ran'], `${step}: ${JSON.stringify(how)}\n${runs[0]!.stderr}\n${runs[1]!.stderr}`)
    ran[how.indexOf('ran')]!++
    assert.equal(seen[0]!.get(step)!.key, seen[1]!.get(step)!.key)
  }
  // The first step was claimed by both at the same moment: the one that did not build it waited for the other.
  const waiter = seen.findIndex((o) => o.get('one')!.how === 'peer')
  const waits = runEvents(runs[waiter]!.stdout).filter((e) => e.type === 'wait' && e.step === 'one')
  assert.equal(waits.length, 1, runs[waiter]!.stdout)
  assert.equal(waits[0]!.where, 'peer')
  assert.equal(waits[0]!.holder, fleet.daemons[1 - waiter]!.peerId)
  // The daemons' counters: one claim granted per step that ran, a held claim at least where the first step waited.
  const status = [await fleet.status(0), await fleet.status(1)]
  assert.deepEqual(status.map((s) => s.claims.granted), ran)
  assert.ok(status[waiter]!.claims.held >= 1)
  assert.equal(status[0]!.claims.expired + status[1]!.claims.expired, 0)
  assert.deepEqual(status.map((s) => s.hits.peer), ran.map((n) => 3 - n), 'every step a VM did not build came from its peer')
}

test('two VMs start the same cold pipeline at once: each step runs on exactly one and hits from that peer on the other', { timeout: 300_000 }, async (t) => {
  const dir = workDir(t, 'claimnet-run')
  await coldOnTwo(await twoHosts(t, dir), dir)
})

test('with a writer key and daemons that trust only it, the claims are signed by it and still one VM builds each step', { timeout: 300_000 }, async (t) => {
  const dir = workDir(t, 'claimnet-writer')
  const secrets = join(dir, 'secrets')
  const trustFile = join(dir, 'writers')
  // The key is made before the fleet, as a CI secret is: keygen-writer needs no daemon.
  const made = spawnSync(process.execPath, [bin, 'keygen-writer', 'ci-main', '--dir', secrets], { encoding: 'utf8' })
  assert.equal(made.status, 0, made.stderr)
  writeFileSync(trustFile, `${made.stdout.trim()}@default\n`)
  const fleet = await twoHosts(t, dir, ['--trusted-writers-file', trustFile])
  await coldOnTwo(fleet, dir, { STRATA_WRITER_KEY_FILE: join(secrets, 'ci-main-1.key') })
  for (const i of [0, 1]) assert.deepEqual((await fleet.status(i)).claims.rejectedBy, {}, 'no claim was refused: the writer signed them all')
})

test('the claimant is killed -9 mid-step: the waiter runs the step once the lease expires, and its run succeeds', { timeout: 300_000 }, async (t) => {
  const dir = workDir(t, 'claimnet-kill')
  const fleet = await twoHosts(t, dir)
  const tag = `strata-claimnet-kill-${process.pid}-${Date.now()}`
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    `salt: ${tag}`,
    'steps:',
    '  - name: slow',
    '    filter: []',
    `    run: sleep 20 && mkdir -p /opt/${tag} && echo built > /opt/${tag}/slow`,
    ''
  ].join('\n'))
  const claimant = fleet.hosts[0]!.spawn(process.execPath, [bin, 'run', '--json', '--data-dir', fleet.daemons[0]!.dataDir], {
    cwd: dir, stdio: ['ignore', 'ignore', 'ignore'], env: { ...process.env, ...HERMETIC }
  })
  const kill9 = (): void => {
    try {
      process.kill(-claimant.pid!, 'SIGKILL')
    } catch {
      // Gone already.
    }
  }
  t.after(kill9)
  await waitFor('h1 holds the claim', 60_000, async () => (await fleet.status(0)).claims.granted >= 1 ? true : undefined)
  const waiting = fleet.strata(1, ['run', '--json', '--data-dir', fleet.daemons[1]!.dataDir], { cwd: dir, timeoutMs: 240_000 })
  await waitFor('h2 waits on h1\'s claim', 60_000, async () => (await fleet.status(1)).claims.held >= 1 ? true : undefined)
  const exited = new Promise((resolve) => claimant.once('exit', resolve))
  kill9()
  await exited
  const r = await waiting
  assert.equal(r.exitCode, 0, r.stderr)
  const events = runEvents(r.stdout)
  const wait = events.find((e) => e.type === 'wait' && e.step === 'slow')
  assert.equal(wait?.where, 'peer', r.stdout)
  assert.equal(wait?.holder, fleet.daemons[0]!.peerId)
  assert.equal(outcomes(r.stdout).get('slow')?.how, 'ran')
  const s = await fleet.status(1)
  assert.equal(s.claims.expired, 1)
  assert.equal(s.claims.granted, 1, 'the waiter claimed the key once the lease had expired')
})
