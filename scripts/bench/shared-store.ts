// What the shared store (openSharedStore, doc/decisions/shared-store.md) costs per
// call, on a store of a few hundred small layers, against a store held open for the
// whole process (openStore) in the same run:
//
//   held: lookup        getRecord + checkLayer on a store held open: the baseline
//   shared: lookup      the same calls back to back on a shared store: its turn is kept
//   turn                a turn of its own: lock, open the index, recover, the
//                       calls, close, unlock (what a call pays after a pause)
//   turn after a write  the same when the turn before wrote a record (LevelDB turns
//                       its log into a table at the next open)
//
// and a warm run of a pipeline of --steps steps (every step a HIT), the store opened,
// the runner made, the pipeline run and the store closed as `strata run` does, on an
// exclusive store (the baseline of these two rows) and on a shared one. Needs root.
//
//   node scripts/bench/shared-store.ts [--layers N] [--reps N] [--steps N] [--json]
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import type { CID } from 'multiformats/cid'
import { openSharedStore, openStore } from '../../packages/store/src/index.ts'
import type { Store } from '../../packages/store/src/index.ts'
import { createRunner, parsePipeline } from '../../packages/runner/src/index.ts'
import { cacheRoot } from './fixture.ts'
import { removeNow, removeOnExit } from './cleanup.ts'
import { formatTable, summarize } from './measure.ts'

const { values } = parseArgs({ options: { layers: { type: 'string', default: '300' }, reps: { type: 'string', default: '40' }, steps: { type: 'string', default: '8' }, json: { type: 'boolean', default: false } } })
const steps = Number(values.steps)
if (!Number.isInteger(steps) || steps < 1) throw new TypeError(`--steps wants a whole number >= 1, got ${values.steps}`)
const layers = Number(values.layers)
const reps = Number(values.reps)
if (!Number.isInteger(layers) || layers < 1) throw new TypeError(`--layers wants a whole number >= 1, got ${values.layers}`)
if (!Number.isInteger(reps) || reps < 1) throw new TypeError(`--reps wants a whole number >= 1, got ${values.reps}`)

const scratch = removeOnExit(join(cacheRoot(), `shared-store-${process.pid}`))
const data = join(scratch, 'data')
mkdirSync(scratch, { recursive: true })
const samples: Record<string, number[]> = { 'held: lookup': [], 'shared: lookup': [], turn: [], 'turn after a write': [], 'warm run: exclusive': [], 'warm run: shared': [] }
const IDLE_MS = 1

const lookup = async (store: Store, roots: CID[], i: number): Promise<void> => {
  await store.getRecord(`bench/${i % roots.length}`)
  const check = await store.checkLayer(roots[i % roots.length]!)
  if (check.status !== 'ok') throw new Error(`layer ${check.root} is ${check.status}`)
}

try {
  process.stderr.write(`committing ${layers} layers\n`)
  const roots: CID[] = []
  const held = await openStore({ dataDir: data })
  try {
    for (let i = 0; i < layers; i++) {
      const dir = join(scratch, `tree-${i}`)
      mkdirSync(join(dir, 'etc'), { recursive: true })
      for (let f = 0; f < 20; f++) writeFileSync(join(dir, 'etc', `f${f}`), `layer ${i} file ${f}\n`)
      roots.push((await held.commit(dir)).root)
      await held.putRecord(`bench/${i}`, Buffer.from(`record ${i}`))
    }
  } finally {
    await held.close()
  }
  // Measured on a store opened afresh, as the shared store's turns find it.
  const reopened = await openStore({ dataDir: data })
  try {
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now()
      await lookup(reopened, roots, r)
      samples['held: lookup']!.push(performance.now() - t0)
    }
  } finally {
    await reopened.close()
  }
  const shared = await openSharedStore({ dataDir: data, idleMs: IDLE_MS })
  try {
    await shared.hold(async () => {
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now()
        await lookup(shared, roots, r)
        samples['shared: lookup']!.push(performance.now() - t0)
      }
    })
    for (const [name, write] of [['turn', false], ['turn after a write', true]] as const) {
      for (let r = 0; r < reps; r++) {
        if (write) await shared.putRecord(`bench/extra-${r}`, Buffer.from('x'))
        // Untimed: the turn before ends.
        await sleep(IDLE_MS + 20)
        const t0 = performance.now()
        await shared.hold(async () => { await lookup(shared, roots, r) })
        samples[name]!.push(performance.now() - t0)
        await sleep(IDLE_MS + 20)
      }
    }
  } finally {
    await shared.close()
  }

  process.stderr.write(`warm runs of ${steps} steps\n`)
  const file = join(scratch, 'strata.yml')
  const yml = ['base: host', 'steps:']
  for (let i = 0; i < steps; i++) yml.push(`  - name: s${i}`, '    filter: []', `    run: mkdir -p /opt/strata-bench-shared && echo ${i} > /opt/strata-bench-shared/s${i}`)
  writeFileSync(file, yml.join('\n') + '\n')
  const pipeline = parsePipeline(yml.join('\n') + '\n', { file })
  const warmRun = async (open: () => Promise<Store>): Promise<number> => {
    const t0 = performance.now()
    const store = await open()
    try {
      const result = await (await createRunner({ store })).run(pipeline)
      if (result.steps.some((st) => st.status !== 'hit') && samples['warm run: exclusive']!.length > 0) throw new Error('a warm run missed')
    } finally {
      await store.close()
    }
    return performance.now() - t0
  }
  await warmRun(async () => await openStore({ dataDir: data }))
  for (let r = 0; r < Math.min(reps, 10); r++) {
    samples['warm run: exclusive']!.push(await warmRun(async () => await openStore({ dataDir: data })))
    samples['warm run: shared']!.push(await warmRun(async () => await openSharedStore({ dataDir: data })))
  }
} finally {
  removeNow(scratch)
}

const base = summarize(samples['held: lookup']!).median
const runBase = summarize(samples['warm run: exclusive']!).median
if (values.json === true) {
  process.stdout.write(JSON.stringify({ layers, reps, steps, samples }) + '\n')
} else {
  const rows = [['', 'median ms', 'min', 'max', 'ratio']]
  for (const [k, v] of Object.entries(samples)) {
    const s = summarize(v)
    const ratio = k.startsWith('warm run') ? `${(s.median / runBase).toFixed(2)}x exclusive` : `${(s.median / base).toFixed(1)}x held`
    rows.push([k, s.median.toFixed(2), s.min.toFixed(2), s.max.toFixed(2), ratio])
  }
  process.stdout.write(`${layers} layers, ${reps} repetitions, warm runs of ${steps} steps\n` + formatTable(rows) + '\n')
}
