// What keying a step's workspace costs, against a plain stat walk and a plain read
// of the same tree, in the same run:
//
//   node scripts/bench/workspace-key.ts [--files 50000] [--reps 5] [--tree DIR] [--json]
//
// A checkout of --files files (generated: node_modules-shaped, many small files and a
// few large ones; or --tree DIR, copied) is the workspace of a one-step pipeline with
// no filter. Timed:
//   walk        statTree of the checkout alone (the floor of any scan)
//   read        reading every file without hashing it (what a cold scan cannot beat)
//   cold        scanWorkspace with no stat cache: every file read and hashed
//   warm        scanWorkspace with nothing changed since the last scan
//   one-change  scanWorkspace after one file was rewritten
//   why-warm    the step's whole key through runner.why() (base, inputs, workspace, lookup), nothing changed
// Ratios are to the same run's walk (warm rows) or read (cold).

import { readFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { statTreeAsync } from '../../packages/sys/src/index.ts'
import { openStore } from '../../packages/store/src/index.ts'
import { createRunner, parsePipeline } from '../../packages/runner/src/index.ts'
import { UNSALTED } from '../../packages/runner/src/key.ts'
import { scanWorkspace } from '../../packages/runner/src/workspace.ts'
import { cacheRoot } from './fixture.ts'
import { formatTable, gauss, parseFlags, rng, summarize } from './measure.ts'
import { removeNow, removeOnExit } from './cleanup.ts'

const flags = parseFlags(process.argv.slice(2), { files: '50000', reps: '5', tree: '', json: false as boolean })
const files = Number(flags.files)
const reps = Number(flags.reps)
if (!Number.isSafeInteger(files) || files < 1 || !Number.isSafeInteger(reps) || reps < 1) throw new TypeError('--files and --reps want whole numbers >= 1')

/** Packages of a few files each, sizes log-normal around a median of ~4 KiB, 1 in 100 files large (100 KB-2 MB). */
function buildTree (dir: string, n: number): { files: number, bytes: number } {
  const r = rng(7)
  const pool = Buffer.alloc(4 * 1024 * 1024)
  for (let i = 0; i < pool.length; i++) pool[i] = 32 + Math.floor(r() * 90)
  let bytes = 0
  let made = 0
  for (let p = 0; made < n; p++) {
    const pkg = join(dir, 'node_modules', `pkg-${p}`)
    mkdirSync(join(pkg, 'lib'), { recursive: true })
    const inPkg = 3 + Math.floor(r() * 12)
    for (let i = 0; i < inPkg && made < n; i++, made++) {
      const large = r() < 0.01
      const size = Math.min(pool.length - 1, large ? 100_000 + Math.floor(r() * 2_000_000) : Math.max(1, Math.round(Math.exp(8.3 + 1.0 * gauss(r)))))
      const name = i === 0 ? 'package.json' : i === 1 ? 'index.js' : `lib/f${i}.js`
      const at = Math.floor(r() * (pool.length - size))
      writeFileSync(join(pkg, name), pool.subarray(at, at + size))
      bytes += size
    }
  }
  return { files: made, bytes }
}

function readAll (dir: string): number {
  let bytes = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) bytes += readAll(p)
    else if (e.isFile()) bytes += readFileSync(p).length
  }
  return bytes
}

const root = removeOnExit(mkdtempSync(join((mkdirSync(cacheRoot(), { recursive: true }), cacheRoot()), 'workspace-key-')))
const rows: Record<string, number[]> = { walk: [], read: [], cold: [], warm: [], 'one-change': [], 'why-warm': [] }
let treeFiles = 0
let treeBytes = 0
try {
  const ws = join(root, 'checkout')
  if (flags.tree !== '') {
    execFileSync('cp', ['-a', '--', flags.tree, ws])
  } else {
    const made = buildTree(ws, files)
    treeFiles = made.files
    treeBytes = made.bytes
  }
  writeFileSync(join(ws, 'strata.yml'), 'base: host\nsteps:\n  - name: build\n    run: "true"\n')
  // Files changed within the last second are never trusted from the cache: let the tree age.
  await delay(1100)
  const cacheDir = join(root, 'cache')
  const limits = { maxFiles: 10_000_000, maxBytes: 2 ** 50 }
  // A fresh spec per scan, as each run makes: a spec keeps its walk for the steps after the first.
  const scan = async (): Promise<Awaited<ReturnType<typeof scanWorkspace>>> => await scanWorkspace('build', { dir: ws, path: '/workspace' }, undefined, { cacheDir, digestKey: UNSALTED, limits })

  for (let rep = 0; rep < reps; rep++) {
    let t = performance.now()
    await statTreeAsync!(ws, 2 ** 31 - 1)
    rows.walk!.push(performance.now() - t)
    t = performance.now()
    const read = readAll(ws)
    rows.read!.push(performance.now() - t)
    if (rep === 0 && treeBytes === 0) treeBytes = read
    rmSync(cacheDir, { recursive: true, force: true })
    t = performance.now()
    const cold = await scan()
    rows.cold!.push(performance.now() - t)
    if (rep === 0) {
      if (treeFiles === 0) treeFiles = cold.files
      process.stderr.write(`tree: ${cold.files} entries in the key, ${treeBytes} bytes of file data${flags.tree === '' ? ' (generated)' : ''}\n`)
    }
    t = performance.now()
    const warm = await scan()
    rows.warm!.push(performance.now() - t)
    if (Buffer.compare(warm.digest, cold.digest) !== 0) throw new Error('a warm scan of an unchanged tree gave another digest')
  }
  const victim = join(ws, 'node_modules', 'pkg-0', 'index.js')
  for (let rep = 0; rep < reps; rep++) {
    writeFileSync(victim, `changed ${rep}\n`)
    const t = performance.now()
    await scan()
    rows['one-change']!.push(performance.now() - t)
  }
  await delay(1100)
  await scan()

  const dataDir = join(root, 'data')
  const store = await openStore({ dataDir })
  try {
    const runner = await createRunner({ store, inputLimits: limits })
    const pipeline = parsePipeline(readFileSync(join(ws, 'strata.yml'), 'utf8'), { file: join(ws, 'strata.yml') })
    await runner.why(pipeline, 'build')
    for (let rep = 0; rep < reps; rep++) {
      const t = performance.now()
      await runner.why(pipeline, 'build')
      rows['why-warm']!.push(performance.now() - t)
    }
  } finally {
    await store.close()
  }
  process.stderr.write(`stat cache: ${readdirSync(cacheDir).map((f) => statSync(join(cacheDir, f)).size).join(', ')} bytes\n`)
} finally {
  removeNow(root)
}

const walk = summarize(rows.walk!).median
const read = summarize(rows.read!).median
const summary = Object.fromEntries(Object.entries(rows).map(([name, samples]) => {
  const s = summarize(samples)
  return [name, { ...s, ratio: s.median / (name === 'cold' ? read : walk), ratioTo: name === 'cold' ? 'read' : 'walk' }]
}))
const coldMBs = treeBytes / 1e6 / (summarize(rows.cold!).median / 1000)
const readMBs = treeBytes / 1e6 / (read / 1000)
if (flags.json === true) {
  process.stdout.write(JSON.stringify({ files: treeFiles, bytes: treeBytes, reps, coldMBs, readMBs, summary }) + '\n')
} else {
  const ms = (v: number): string => v < 10 ? v.toFixed(2) : v.toFixed(0)
  process.stdout.write(formatTable([
    ['', 'median ms', 'min', 'max', 'ratio'],
    ...Object.entries(summary).map(([name, s]) => [name, ms(s.median), ms(s.min), ms(s.max), `${s.ratio.toFixed(2)} x ${s.ratioTo}`])
  ]) + '\n')
  process.stdout.write(`cold: ${coldMBs.toFixed(0)} MB/s (${(treeFiles / (summarize(rows.cold!).median / 1000)).toFixed(0)} files/s); plain read: ${readMBs.toFixed(0)} MB/s\n`)
}
