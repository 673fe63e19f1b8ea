// Parsing + validating a strata.yml whose one step declares a large `env:` map.
//
//   node scripts/bench/pipeline-parse.ts [--reps 3]
//
// For 10k, 20k, 40k and 100k keys (block style, the limits raised so that the whole
// map is validated) it times parsePipeline against the baseline of the same run:
// the yaml library's parseDocument alone on the same text. Linear validation keeps
// both "x 10k" columns near the size ratio (2, 4, 10) and "x yaml" flat.
//
// Then the densest `use`: 100, 200 and 400 steps, each using every step before it
// (400 is near the 1 MiB bound), against the same baseline; and stepGraph with the
// stack below every step, the scheduler's work on the parsed file.

import { parseDocument } from 'yaml'
import { parsePipeline } from '../../packages/runner/src/pipeline.ts'
import { stepGraph } from '../../packages/runner/src/graph.ts'

const reps = Number(process.argv[process.argv.indexOf('--reps') + 1] ?? 3) || 3
const sizes = [10_000, 20_000, 40_000, 100_000]

function text (n: number): string {
  const lines = ['base: host', 'steps:', '  - name: a', '    run: "true"', '    env:']
  for (let i = 0; i < n; i++) lines.push(`      K${i}: v${i}`)
  return lines.join('\n') + '\n'
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

function time (fn: () => void): number {
  const t = performance.now()
  fn()
  return performance.now() - t
}

// Warm the JIT on a small file first.
parsePipeline(text(2000), { file: '/bench/strata.yml', limits: { env: 2000 } })
const rows: Array<{ n: number, yaml: number, pipeline: number }> = []
for (const n of sizes) {
  const t = text(n)
  const limits = { env: n, bytes: Buffer.byteLength(t) }
  const yaml: number[] = []
  const pipeline: number[] = []
  for (let r = 0; r < reps; r++) {
    yaml.push(time(() => parseDocument(t, { uniqueKeys: false, strict: true })))
    pipeline.push(time(() => parsePipeline(t, { file: '/bench/strata.yml', limits })))
  }
  rows.push({ n, yaml: median(yaml), pipeline: median(pipeline) })
}
const first = rows[0]!
process.stdout.write('| env keys | yaml parse ms | parsePipeline ms | yaml x 10k | parsePipeline x 10k | parsePipeline x yaml |\n')
process.stdout.write('| --- | --- | --- | --- | --- | --- |\n')
for (const r of rows) {
  process.stdout.write(`| ${r.n} | ${r.yaml.toFixed(0)} | ${r.pipeline.toFixed(0)} | ${(r.yaml / first.yaml).toFixed(2)} | ${(r.pipeline / first.pipeline).toFixed(2)} | ${(r.pipeline / r.yaml).toFixed(2)} |\n`)
}

function denseUse (n: number): string {
  const lines = ['base: host', 'steps:']
  for (let i = 0; i < n; i++) lines.push(`  - { name: s${i}, run: x, use: [${Array.from({ length: i }, (_, j) => `s${j}`).join(',')}] }`)
  return lines.join('\n') + '\n'
}

process.stdout.write('\n| steps, each using all before | KiB | yaml parse ms | parsePipeline ms | parsePipeline x yaml | stepGraph + every stack ms |\n')
process.stdout.write('| --- | --- | --- | --- | --- | --- |\n')
for (const n of [100, 200, 400]) {
  const t = denseUse(n)
  const yaml: number[] = []
  const pipeline: number[] = []
  const graph: number[] = []
  for (let r = 0; r < reps; r++) {
    yaml.push(time(() => parseDocument(t, { uniqueKeys: false, strict: true })))
    pipeline.push(time(() => parsePipeline(t, { file: '/bench/strata.yml' })))
    const p = parsePipeline(t, { file: '/bench/strata.yml' })
    graph.push(time(() => {
      const g = stepGraph(p)
      for (const s of p.steps) g.ancestors(s.name)
    }))
  }
  const y = median(yaml)
  const pp = median(pipeline)
  process.stdout.write(`| ${n} | ${(Buffer.byteLength(t) / 1024).toFixed(0)} | ${y.toFixed(0)} | ${pp.toFixed(0)} | ${(pp / y).toFixed(2)} | ${median(graph).toFixed(0)} |\n`)
}
