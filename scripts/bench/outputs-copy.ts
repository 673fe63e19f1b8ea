// Delivering a step's outputs: deliverOutputs() from a layer dir against `cp -a` of
// the same dir, in the same run.
//
//   node scripts/bench/outputs-copy.ts [--reps 5] [--files 20000]
//
// The tree is N files of 1-4 KiB in 100 dirs plus one 64 MiB file, in a layer dir
// read through a LayeredView (an empty dir as the base). Both copies go to the same
// filesystem. Prints medians (min-max) and the ratio deliverOutputs / cp -a.

import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { deliverOutputs } from '../../packages/runner/src/outputs.ts'
import { LayeredView } from '../../packages/runner/src/view.ts'
import { beforeRemoval } from './cleanup.ts'

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(name)
  return i === -1 ? dflt : Number(process.argv[i + 1]) || dflt
}
const reps = arg('--reps', 5)
const files = arg('--files', 20_000)
const root = `${process.env.STRATA_BENCH_CACHE ?? '/var/tmp/strata-bench'}`
mkdirSync(root, { recursive: true })
const scratch = mkdtempSync(`${root}/outputs-copy-`)
beforeRemoval(() => rmSync(scratch, { recursive: true, force: true }))

const layer = `${scratch}/layer`
const base = `${scratch}/base`
mkdirSync(`${layer}/ws/dist`, { recursive: true })
mkdirSync(base)
for (let d = 0; d < 100; d++) mkdirSync(`${layer}/ws/dist/d${d}`)
for (let i = 0; i < files; i++) writeFileSync(`${layer}/ws/dist/d${i % 100}/f${i}.js`, Buffer.alloc(1024 + (i % 4) * 1024, i % 251))
writeFileSync(`${layer}/ws/dist/big.bin`, Buffer.alloc(64 * 1024 * 1024, 7))

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const cp: number[] = []
const deliver: number[] = []
for (let r = 0; r < reps; r++) {
  const a = `${scratch}/cp-${r}`
  mkdirSync(a)
  let t = performance.now()
  const res = spawnSync('cp', ['-a', `${layer}/ws/dist`, `${a}/dist`])
  if (res.status !== 0) throw new Error(`cp failed: ${res.stderr.toString()}`)
  cp.push(performance.now() - t)
  rmSync(a, { recursive: true })

  const host = `${scratch}/host-${r}`
  mkdirSync(host)
  t = performance.now()
  await deliverOutputs('bench', new LayeredView([layer], base), { viewDir: '/ws', hostDir: host, hostRoot: host }, ['dist'])
  deliver.push(performance.now() - t)
  rmSync(host, { recursive: true })
  process.stderr.write(`rep ${r + 1}/${reps}\n`)
}
const fmt = (xs: number[]): string => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})`
process.stdout.write(`| files | cp -a ms | deliverOutputs ms | deliverOutputs / cp -a |\n| --- | --- | --- | --- |\n`)
process.stdout.write(`| ${files} + 64 MiB | ${fmt(cp)} | ${fmt(deliver)} | ${(median(deliver) / median(cp)).toFixed(2)} |\n`)
rmSync(scratch, { recursive: true, force: true })
