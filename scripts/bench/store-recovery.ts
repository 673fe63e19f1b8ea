// What crash recovery and index rebuilds cost, on the big-tree fixture (one layer of
// ~85k entries, ~400 MB), each against a baseline measured in the same run:
//
//   open (clean)      openStore after a clean close: the baseline for the next row
//   open after crash  openStore when the last process died with the store open: the
//                     recovery plus the full sweep of orphan block/mblock keys
//   commit            committing the tree: the baseline for the next row
//   rebuild           openStore with the index gone: every layer dir packed again
//                     and indexed (what a quarantined index costs)
//   remove (GC)       removing the layer: its index keys and its dir
//
//   node scripts/bench/store-recovery.ts [--reps N] [--json]
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { openStore } from '../../packages/store/src/index.ts'
import { bigTree, cacheRoot } from './fixture.ts'
import { removeNow, removeOnExit } from './cleanup.ts'
import { formatTable, summarize } from './measure.ts'

const { values } = parseArgs({ options: { reps: { type: 'string', default: '3' }, json: { type: 'boolean', default: false } } })
const reps = Number(values.reps)
if (!Number.isInteger(reps) || reps < 1) throw new TypeError(`--reps wants a whole number >= 1, got ${values.reps}`)

const tree = await bigTree()
const scratch = removeOnExit(join(cacheRoot(), `store-recovery-${process.pid}`))
const data = join(scratch, 'data')
mkdirSync(scratch, { recursive: true })
const samples: Record<string, number[]> = { 'open (clean)': [], 'open after crash': [], commit: [], rebuild: [], 'remove (GC)': [] }

const timed = async (name: string, fn: () => Promise<void>): Promise<void> => {
  const t0 = performance.now()
  await fn()
  samples[name]!.push((performance.now() - t0) / 1000)
}

try {
  for (let r = 0; r < reps; r++) {
    process.stderr.write(`rep ${r + 1}/${reps}\n`)
    rmSync(data, { recursive: true, force: true })
    execFileSync('cp', ['-a', tree, join(scratch, 'src')])
    let store = await openStore({ dataDir: data })
    await timed('commit', async () => { await store.commit(join(scratch, 'src')) })
    await store.close()
    await timed('open (clean)', async () => { await (await openStore({ dataDir: data })).close() })
    // A process that died with the store open leaves meta:open behind.
    const db = new ClassicLevel(join(data, 'index'))
    await db.put('meta:open', '1')
    await db.close()
    await timed('open after crash', async () => { await (await openStore({ dataDir: data })).close() })
    rmSync(join(data, 'index'), { recursive: true })
    await timed('rebuild', async () => { store = await openStore({ dataDir: data }) })
    const [layer] = await store.listLayers()
    if (layer === undefined) throw new Error('the rebuild lost the layer')
    await timed('remove (GC)', async () => { await store.removeLayer(layer.root) })
    await store.close()
  }
} finally {
  removeNow(scratch)
}

const med = (k: string): number => summarize(samples[k]!).median
const ratios: Record<string, number> = { 'open after crash': med('open after crash') / med('open (clean)'), rebuild: med('rebuild') / med('commit') }
if (values.json === true) {
  process.stdout.write(JSON.stringify({ reps, samples, ratios }) + '\n')
} else {
  const rows = [['', 'median s', 'min', 'max', 'ratio']]
  for (const [k, v] of Object.entries(samples)) {
    const s = summarize(v)
    rows.push([k, s.median.toFixed(2), s.min.toFixed(2), s.max.toFixed(2), k in ratios ? `${ratios[k]!.toFixed(2)}x ${k === 'rebuild' ? 'commit' : 'clean open'}` : ''])
  }
  process.stdout.write(formatTable(rows) + '\n')
}
