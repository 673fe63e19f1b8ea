// Timing child processes for benchmarks: wall time from the parent's clock, peak
// RSS from GNU time (Debian package `time`), and summaries over repetitions.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { beforeRemoval } from './cleanup.ts'

export const GNU_TIME = '/usr/bin/time'

const STRATA_BIN = fileURLToPath(new URL('../../packages/cli/bin/strata.js', import.meta.url))

/**
 * The CLI's bin, to run as `npx strata` runs it: the file itself, whose shebang sets
 * the node flags and malloc tunables, with this node first on PATH (where npm puts
 * its own) for the shebang to find.
 */
export function strataBin (): string {
  const nodeDir = dirname(process.execPath)
  if (process.env.PATH?.split(':')[0] !== nodeDir) process.env.PATH = `${nodeDir}:${process.env.PATH ?? ''}`
  return STRATA_BIN
}

export interface RunResult {
  seconds: number
  /** Peak resident set size of the command in bytes, null without GNU time. */
  peakRss: number | null
  stdout: string
  stderr: string
}

export class CommandFailedError extends Error {
  override name = 'CommandFailedError'
  code = 'BENCH_COMMAND_FAILED'
  readonly command: string
  readonly exitCode: number | null
  readonly signal: string | null
  readonly stderr: string
  constructor (command: string, exitCode: number | null, signal: string | null, stderr: string) {
    super(`${command} failed (${signal ?? `exit ${exitCode}`}): ${stderr.trim().split('\n').slice(-5).join(' | ')}`)
    this.command = command
    this.exitCode = exitCode
    this.signal = signal
    this.stderr = stderr
  }
}

/**
 * Runs `cmd args` and measures it. `timeFile` is a scratch path for GNU time's
 * report (kept off the command's stderr so the two never mix).
 */
export async function runMeasured (cmd: string, args: string[], timeFile: string | null, cwd?: string): Promise<RunResult> {
  const useTime = timeFile !== null && existsSync(GNU_TIME)
  const argv = useTime ? [GNU_TIME, '-f', '%M', '-o', timeFile, cmd, ...args] : [cmd, ...args]
  const started = process.hrtime.bigint()
  const { code, signal, stdout, stderr } = await spawnCollect(argv, cwd)
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const label = [cmd, ...args].join(' ')
  if (code !== 0) throw new CommandFailedError(label, code, signal, stderr)
  let peakRss: number | null = null
  if (useTime) {
    const kib = Number.parseInt((await readFile(timeFile, 'utf8')).trim().split('\n').at(-1) ?? '', 10)
    peakRss = Number.isFinite(kib) ? kib * 1024 : null
    await rm(timeFile, { force: true })
  }
  return { seconds, peakRss, stdout, stderr }
}

/** Runs a command that is not being measured; throws on failure. */
export async function runQuiet (cmd: string, args: string[], cwd?: string): Promise<string> {
  const { code, signal, stdout, stderr } = await spawnCollect([cmd, ...args], cwd)
  if (code !== 0) throw new CommandFailedError([cmd, ...args].join(' '), code, signal, stderr)
  return stdout
}

function spawnCollect (argv: string[], cwd?: string): Promise<{ code: number | null, signal: string | null, stdout: string, stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    // A child still writing into scratch space while it is removed would leave debris.
    const unregister = beforeRemoval(() => { child.kill('SIGKILL') })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
    child.on('error', (err) => { unregister(); reject(err) })
    child.on('close', (code, signal) => { unregister(); resolve({ code, signal, stdout, stderr }) })
  })
}

export interface Summary {
  median: number
  min: number
  max: number
}

export function summarize (samples: number[]): Summary {
  if (samples.length === 0) throw new RangeError('no samples')
  const sorted = [...samples].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
  return { median, min: sorted[0]!, max: sorted.at(-1)! }
}

/** Parses `--name value` / `--flag` options; unknown options are an error. */
export function parseFlags<T extends Record<string, string | boolean>> (argv: string[], defaults: T): T {
  const out: Record<string, string | boolean> = { ...defaults }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('--')) throw new TypeError(`unexpected argument ${arg}`)
    const [name, inline] = arg.slice(2).split('=', 2) as [string, string | undefined]
    if (name.startsWith('no-') && typeof defaults[name.slice(3)] === 'boolean' && inline === undefined) {
      out[name.slice(3)] = false
      continue
    }
    if (!(name in defaults)) throw new TypeError(`unknown option --${name}; known: ${Object.keys(defaults).map((k) => '--' + k).join(' ')}`)
    if (typeof defaults[name] === 'boolean') out[name] = inline === undefined ? true : inline !== 'false'
    else {
      const value = inline ?? argv[++i]
      if (value === undefined) throw new TypeError(`--${name} needs a value`)
      out[name] = value
    }
  }
  return out as T
}

/** Left-aligns the first column, right-aligns the others. */
export function formatTable (rows: string[][]): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length) })
  return rows.map((row) => row.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ').trimEnd()).join('\n')
}

/** A deterministic PRNG, so that every run builds the same tree. */
export function rng (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A standard normal sample from two uniform ones (Box-Muller). */
export function gauss (r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r())
}
