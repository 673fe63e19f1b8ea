// What checking a layer costs, against committing it, in the same run:
//
//   node scripts/bench/layer-verification.ts [--files 5000] [--reps 5] [--tree DIR] [--json]
//
// A node_modules-shaped tree (generated: many small files, a few large ones; or
// --tree DIR, copied) is committed to a fresh store per rep. Timed per rep:
//   commit         store.commit (moves the tree in; includes the fingerprint walk)
//   fingerprint    the stat walk a commit adds (fingerprint(), on the committed dir)
//   fingerprint-js the same walk through node:fs (what a build of @strata/sys without statTree does)
//   getLayer       the lookup a local hit did before (index read + existsSync)
//   checkLayer     what a local hit does now: getLayer + the stat walk, compared
//   verifyLayer    a full re-read and re-hash against the manifest (strata verify, scrub)
// Ratios are to the same rep's commit. fs-verity rows appear only where the data
// dir's filesystem has it (it is sealed at commit, so it shows in `commit`).

import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fingerprint, openStore } from '../../packages/store/src/index.ts'
import { cacheRoot } from './fixture.ts'
import { formatTable, gauss, parseFlags, rng, summarize } from './measure.ts'
import { removeNow, removeOnExit } from './cleanup.ts'

const flags = parseFlags(process.argv.slice(2), { files: '5000', reps: '5', tree: '', json: false as boolean })
const files = Number(flags.files)
const reps = Number(flags.reps)
if (!Number.isSafeInteger(files) || files < 1 || !Number.isSafeInteger(reps) || reps < 1) throw new TypeError('--files and --reps want whole numbers >= 1')

/** Packages of a few files each, sizes log-normal around a median of ~460 bytes, 1 in 200 files large. */
function buildTree (dir: string, n: number): number {
  const r = rng(42)
  let bytes = 0
  let made = 0
  for (let p = 0; made < n; p++) {
    const pkg = join(dir, 'node_modules', `pkg-${p}`)
    mkdirSync(join(pkg, 'lib'), { recursive: true })
    const inPkg = 3 + Math.floor(r() * 12)
    for (let i = 0; i < inPkg && made < n; i++, made++) {
      const large = r() < 0.005
      const size = large ? 100_000 + Math.floor(r() * 2_000_000) : Math.max(1, Math.round(Math.exp(6.13 + 1.3 * gauss(r))))
      const name = i === 0 ? 'package.json' : i === 1 ? 'index.js' : `lib/f${i}.js`
      writeFileSync(join(pkg, name), text(r, size))
      bytes += size
    }
  }
  return bytes
}

function text (r: () => number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size)
  for (let i = 0; i < size; i++) b[i] = 32 + Math.floor(r() * 90)
  return b
}

const root = removeOnExit(mkdtempSync(join((mkdirSync(cacheRoot(), { recursive: true }), cacheRoot()), 'layer-verification-')))
const rows: Record<string, number[]> = { commit: [], fingerprint: [], 'fingerprint-js': [], getLayer: [], checkLayer: [], verifyLayer: [] }
let treeBytes = 0
try {
  const template = join(root, 'template')
  if (flags.tree !== '') {
    execFileSync('cp', ['-a', '--', flags.tree, template])
  } else {
    treeBytes = buildTree(template, files)
  }
  for (let rep = 0; rep < reps; rep++) {
    const src = join(root, `src-${rep}`)
    execFileSync('cp', ['-a', '--', template, src])
    execFileSync('sync')
    const store = await openStore({ dataDir: join(root, `data-${rep}`) })
    try {
      let t = performance.now()
      const info = await store.commit(src)
      rows.commit!.push(performance.now() - t)
      t = performance.now()
      await fingerprint(info.path)
      rows.fingerprint!.push(performance.now() - t)
      t = performance.now()
      await fingerprint(info.path, { native: false })
      rows['fingerprint-js']!.push(performance.now() - t)
      t = performance.now()
      await store.getLayer(info.root)
      rows.getLayer!.push(performance.now() - t)
      t = performance.now()
      const c = await store.checkLayer(info.root)
      rows.checkLayer!.push(performance.now() - t)
      if (c.status !== 'ok') throw new Error(`the check of an untouched layer said ${c.status}`)
      t = performance.now()
      const v = await store.verifyLayer(info.root)
      rows.verifyLayer!.push(performance.now() - t)
      if (v.status !== 'ok') throw new Error(`the verification of an untouched layer said ${v.status}`)
      if (rep === 0) process.stderr.write(`tree: ${info.entries} entries, ${info.size} bytes of file data${treeBytes > 0 ? ' (generated)' : ''}\n`)
    } finally {
      await store.close()
    }
    removeNow(join(root, `data-${rep}`))
    process.stderr.write(`rep ${rep + 1}/${reps} done\n`)
  }
} finally {
  removeNow(root)
}

const commit = summarize(rows.commit!).median
const summary = Object.fromEntries(Object.entries(rows).map(([name, samples]) => [name, { ...summarize(samples), ratioToCommit: summarize(samples).median / commit }]))
if (flags.json === true) {
  process.stdout.write(JSON.stringify({ files, reps, summary }) + '\n')
} else {
  const ms = (v: number): string => v < 10 ? v.toFixed(2) : v.toFixed(0)
  process.stdout.write(formatTable([
    ['', 'median ms', 'min', 'max', 'x commit'],
    ...Object.entries(summary).map(([name, s]) => [name, ms(s.median), ms(s.min), ms(s.max), s.ratioToCommit.toFixed(3)])
  ]) + '\n')
}
