import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Fleet, blobPipeline, outcomes, waitFor } from '../scripts/fleet-lib.ts'
import { workDir } from './helpers.ts'

const HOSTS = 8
const SEEDS = [0, 1]

test('churn: a third of 8 daemons killed -9 (the producer among them) while three consumers restore; every run completes, no replicated layer is lost, copy counts converge, misses are logged with their reason', { timeout: 300_000 }, async (t) => {
  const dir = workDir(t, 'fleet-churn')
  const fleet = await Fleet.create({ hosts: HOSTS, workDir: join(dir, 'fleet'), daemonArgs: ['--replicas', '2'] })
  t.after(() => fleet.destroy())
  const tag = `strata-churn-${process.pid}-${Date.now()}`
  writeFileSync(join(dir, 'strata.yml'), blobPipeline(tag, 400000))

  for (let i = 0; i < HOSTS; i++) fleet.start(i, { bootstrap: SEEDS })
  for (let i = 0; i < HOSTS; i++) await fleet.ready(i, { peers: 2 })

  // The producer runs the pipeline; replication copies each layer to two more daemons.
  const producer = 2
  const made = await fleet.strata(producer, ['run', '--json', '--data-dir', fleet.daemons[producer]!.dataDir], { cwd: dir })
  assert.equal(made.exitCode, 0, made.stderr)
  const steps = outcomes(made.stdout)
  const roots = [...steps.values()].map((o) => o.layer!)
  assert.equal(roots.length, 2, made.stdout)
  // The producer's own misses (no record anywhere yet) are logged with the lookup's outcome.
  const producerLog = fleet.daemons[producer]!.logFile
  for (const o of steps.values()) {
    const why = fleet.events(producerLog).find((e) => e.event === 'resolve' && e.key === o.key)
    assert.ok(why?.outcome === 'miss' && why.stage === 'lookup' && why.code === 'ERR_RECORD_NOT_FOUND' && typeof why.reason === 'string',
      `the producer's miss of ${o.key} is not logged with its reason: ${JSON.stringify(why)}`)
  }
  const holders = async (root: string): Promise<number[]> => {
    const out: number[] = []
    for (const i of fleet.running) if ((await fleet.layers(i)).has(root)) out.push(i)
    return out
  }
  let seen = ''
  const before = await waitFor('each layer held by the producer and 2 replicas', 60_000, async () => {
    const h = await Promise.all(roots.map(holders))
    seen = JSON.stringify(h)
    return h.every((x) => x.length >= 3) ? h : undefined
  }, () => `holders by layer: ${seen}`, 500)

  // Kill a third: the producer, a replica of the first layer, and one that holds neither
  // (or any other); never every holder of a layer. Consumers hold neither layer.
  const holdsAny = new Set(before.flat())
  // A replica of the first layer, not the seed restarted daemons join through.
  const replica = before[0]!.find((i) => i !== producer && !SEEDS.includes(i)) ?? before[0]!.find((i) => i !== producer && i !== SEEDS[0])!
  const idle = [...Array(HOSTS).keys()].filter((i) => !holdsAny.has(i))
  // Rendezvous hashing places the replicas: they may leave one idle host beside the seeds
  // (1 run in 15), and then a seed restores too.
  const consumers = [...idle.filter((i) => !SEEDS.includes(i)), ...idle.filter((i) => SEEDS.includes(i))].slice(0, 3)
  const third = [...Array(HOSTS).keys()].find((i) => i !== producer && i !== replica && !consumers.includes(i) && i !== SEEDS[0] &&
    before.every((h) => h.filter((x) => x !== producer && x !== replica && x !== i).length >= 1))
  const victims = [producer, replica, ...(third !== undefined ? [third] : [])]
  assert.ok(consumers.length >= 2, `consumers that hold nothing: ${JSON.stringify(idle)} (holders ${JSON.stringify(before)})`)
  t.diagnostic(`holders ${JSON.stringify(before)}, victims ${JSON.stringify(victims)}, consumers ${JSON.stringify(consumers)}`)

  const runs = consumers.map(async (c) => await fleet.strata(c, ['run', '--json', '--data-dir', fleet.daemons[c]!.dataDir], { cwd: dir, timeoutMs: 150_000 }))
  for (const v of victims) await fleet.kill9(v)
  for (const v of victims) fleet.start(v, { bootstrap: SEEDS })
  const results = await Promise.all(runs)

  // Every restore completed, from a replica or by running the step; none hung past its bound.
  for (const [n, r] of results.entries()) {
    const c = consumers[n]!
    assert.equal(r.signal, null, `consumer h${c + 1} was cut off at its bound: ${r.stderr}`)
    assert.equal(r.exitCode, 0, `consumer h${c + 1}: ${r.stderr}`)
    const got = outcomes(r.stdout)
    t.diagnostic(`h${c + 1}: ${[...got].map(([step, o]) => `${step} ${o.how}`).join(', ')}`)
    assert.deepEqual([...got.keys()], ['make', 'use'], r.stdout)
    // A miss although a holder lived is logged with the lookup's outcome.
    const resolves = fleet.events(fleet.daemons[c]!.logFile).filter((e) => e.event === 'resolve')
    for (const [step, o] of got) {
      if (o.how !== 'ran') continue
      const why = resolves.find((e) => e.key === o.key && e.outcome === 'miss')
      assert.ok(why !== undefined && typeof why.stage === 'string' && typeof why.reason === 'string',
        `h${c + 1} ran ${step} without a logged reason; resolve events: ${JSON.stringify(resolves)}`)
    }
  }
  for (const v of victims) await fleet.ready(v, { peers: 1 })

  // No layer that had two or more copies is lost.
  for (const root of roots) assert.ok((await holders(root)).length >= 1, `layer ${root} lost`)

  // The copy counts a surviving holder reports converge to the daemons that hold the layer.
  const reporter = fleet.running.find((i) => before[0]!.includes(i) && !victims.includes(i))!
  let report = ''
  await waitFor('strata status copies equal the live holders', 90_000, async () => {
    const status = await fleet.status(reporter, { copies: true, ms: 60_000 })
    const truth = await Promise.all(roots.map(async (r) => (await holders(r)).length))
    const claimed = roots.map((r) => status.layers.find((l) => l.root === r)?.copies ?? -1)
    report = `status ${JSON.stringify(claimed)}, truth ${JSON.stringify(truth)}`
    t.diagnostic(report)
    return claimed[0] === truth[0] && (claimed[1] === -1 || claimed[1] === truth[1]) ? true : undefined
  }, () => report, 2000)
})
