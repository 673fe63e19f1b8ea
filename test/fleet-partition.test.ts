import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { recordKey } from '@strata/records'
import { Fleet, blobPipeline, outcomes, waitFor } from '../scripts/fleet-lib.ts'
import { workDir } from './helpers.ts'

const HOSTS = 8
const A = [0, 1, 2, 3]
const B = [4, 5, 6, 7]
/** One seed in each half, so each half still has one while split. */
const SEEDS = [0, 4]


test('partition: 8 daemons split in two halves keep serving what each holds (misses run), and records written during the split reach every daemon after healing', { timeout: 300_000 }, async (t) => {
  const dir = workDir(t, 'fleet-partition')
  const fleet = await Fleet.create({ hosts: HOSTS, workDir: join(dir, 'fleet'), daemonArgs: ['--replicas', '2'] })
  t.after(() => fleet.destroy())
  const tag = `strata-part-${process.pid}-${Date.now()}`
  for (const name of ['before', 'a', 'b']) writeFileSync(join(dir, `${name}.yml`), blobPipeline(`${tag}-${name}`, 200000))
  let lastErr = ''
  const run = async (i: number, file: string): Promise<ReturnType<typeof outcomes>> => {
    const r = await fleet.strata(i, ['run', '--json', '-f', file, '--data-dir', fleet.daemons[i]!.dataDir], { cwd: dir, timeoutMs: 150_000 })
    assert.equal(r.signal, null, `h${i + 1} ${file}: cut off at its bound: ${r.stderr}`)
    assert.equal(r.exitCode, 0, `h${i + 1} ${file}: ${r.stderr}`)
    const got = outcomes(r.stdout)
    t.diagnostic(`h${i + 1} ${file}: ${[...got].map(([s, o]) => `${s} ${o.how}${o.reason !== undefined ? ` (${o.reason})` : ''}`).join(', ')}`)
    lastErr = r.stderr
    return got
  }

  for (let i = 0; i < HOSTS; i++) fleet.start(i, { bootstrap: SEEDS })
  for (let i = 0; i < HOSTS; i++) await fleet.ready(i, { peers: 2 })

  // Before the split: h2 makes the layers, replication copies them.
  const before = await run(1, 'before.yml')
  const roots = [...before.values()].map((o) => o.layer!)
  const holdersOf = async (root: string, among: number[]): Promise<number[]> => {
    const out: number[] = []
    for (const i of among) if ((await fleet.layers(i)).has(root)) out.push(i)
    return out
  }
  await waitFor('each layer held by the producer and 2 replicas', 60_000, async () =>
    (await Promise.all(roots.map(async (r) => await holdersOf(r, fleet.running)))).every((h) => h.length >= 3) ? true : undefined, () => '', 500)
  // h7 takes the layers too, so that B's half holds them whichever hosts the replicas went to.
  const inB7 = await run(6, 'before.yml')
  assert.ok([...inB7.values()].every((o) => o.how !== 'ran'), 'h7 restores the layers before the split')
  const heldInB = await Promise.all(roots.map(async (r) => await holdersOf(r, B)))

  fleet.partition(B)
  // Each half runs its own new pipeline, and a consumer in B restores the first one:
  // from B's copies if B holds them, else the step runs.
  const inA = await run(2, 'a.yml')
  const inB = await run(5, 'b.yml')
  const consumerB = B.find((i) => heldInB.every((h) => !h.includes(i)) && i !== 5)
  t.diagnostic(`held in B: ${JSON.stringify(heldInB)}, consumer ${consumerB === undefined ? 'none' : `h${consumerB + 1}`}`)
  if (consumerB !== undefined) {
    const got = await run(consumerB, 'before.yml')
    for (const [n, step] of ['make', 'use'].entries()) {
      // A step whose parent ran here again (its layer held only in the other half) has another key: nobody holds that.
      const sameKey = got.get(step)?.key === before.get(step)?.key
      if (heldInB[n]!.length > 0 && sameKey) assert.notEqual(got.get(step)?.how, 'ran', `h${consumerB + 1} ran ${step} (${got.get(step)?.reason}) though h${heldInB[n]![0]! + 1} in its half holds it: ${lastErr}\n${readFileSync(fleet.daemons[consumerB]!.logFile, 'utf8').split('\n').filter((l) => /fetch|provider|restore|warn|error/i.test(l)).slice(-30).join('\n')}`)
    }
  }
  const consumerA = A.find((i) => i !== 1 && i !== 2)!
  const gotA = await run(consumerA, 'before.yml')
  assert.ok([...gotA.values()].every((o) => o.how !== 'ran'), 'the producer\'s half serves its layers')
  // Nothing crossed: B has not learned A's record.
  const slots = [...inA.values(), ...inB.values()].map((o) => recordKey(o.key, 'default'))
  assert.equal(await fleet.hasRecord(5, recordKey(inA.get('make')!.key, 'default')), false, 'a record crossed the partition')

  fleet.heal()
  let missing = ''
  await waitFor('every daemon knows the records written in both halves during the split', 120_000, async () => {
    const lacking: string[] = []
    for (const i of fleet.running) {
      for (const s of slots) if (!(await fleet.hasRecord(i, s))) lacking.push(`h${i + 1}`)
    }
    missing = [...new Set(lacking)].join(' ')
    return lacking.length === 0 ? true : undefined
  }, () => `still lacking: ${missing}`, 1000)
  const synced = await Promise.all(fleet.running.map(async (i) => (await fleet.status(i)).recordSync.recordsSynced))
  t.diagnostic(`records learned on reconnecting, by daemon: ${synced.join(' ')}`)
})
