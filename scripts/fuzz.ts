// The property tests of the suite, run longer: every fuzz test file with FUZZ_RUNS
// cases per property, under a capped heap so that an input that makes a decoder
// allocate without bound fails the run instead of swapping the machine.
//
//   node scripts/fuzz.ts [--runs N] [--seed S] [--heap-mb M] [FILE...]
//
// Defaults: 20 000 runs, a random seed (printed, and by fast-check with any
// counterexample, so a failure can be replayed with --seed), a 1024 MiB heap,
// and every packages/*/test/fuzz*.test.ts.
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '20000' },
    seed: { type: 'string' },
    'heap-mb': { type: 'string', default: '1024' }
  }
})
const runs = Number(values.runs)
const heap = Number(values['heap-mb'])
if (!Number.isInteger(runs) || runs < 1) throw new TypeError(`--runs wants a positive integer, got ${values.runs}`)
if (!Number.isInteger(heap) || heap < 64) throw new TypeError(`--heap-mb wants an integer >= 64, got ${values['heap-mb']}`)
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31)
if (!Number.isInteger(seed)) throw new TypeError(`--seed wants an integer, got ${values.seed}`)

const files = positionals.length > 0
  ? positionals
  : readdirSync(join(root, 'packages')).flatMap((pkg) => {
    const dir = join(root, 'packages', pkg, 'test')
    try {
      return readdirSync(dir).filter((f) => /^fuzz.*\.test\.ts$/.test(f)).map((f) => join(dir, f))
    } catch {
      return []
    }
  })
if (files.length === 0) throw new Error('no fuzz test files found')

process.stdout.write(`fuzz: ${files.length} files, ${runs} runs per property, seed ${seed}, heap ${heap} MiB\n`)
const t0 = performance.now()
const child = spawn(process.execPath, [`--max-old-space-size=${heap}`, '--test', '--test-concurrency=1', '--test-timeout=0', ...files], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, FUZZ_RUNS: String(runs), FUZZ_SEED: String(seed) }
})
const onSignal = (sig: NodeJS.Signals): void => { child.kill(sig) }
process.once('SIGINT', onSignal)
process.once('SIGTERM', onSignal)
const code = await new Promise<number>((resolve) => child.once('exit', (c, sig) => resolve(c ?? (sig !== null ? 128 : 1))))
process.stdout.write(`fuzz: ${code === 0 ? 'passed' : `FAILED (exit ${code})`} in ${((performance.now() - t0) / 1000).toFixed(1)} s; replay with --seed ${seed}\n`)
process.exitCode = code
