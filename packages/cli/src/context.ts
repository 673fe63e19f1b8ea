import { pino } from 'pino'
import type { Logger } from 'pino'
import type { Writable } from 'node:stream'

/** What every command gets: its arguments, where to print, a logger and the run's cancel signal. */
export interface CommandContext {
  argv: string[]
  stdout: Writable
  stderr: Writable
  logger: Logger
  signal: AbortSignal
}

export interface Command {
  name: string
  summary: string
  usage: string
  run(ctx: CommandContext): Promise<number>
}

/** A mistake in how the command was called: printed with the usage line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError'
  readonly code = 'ERR_USAGE'
}

export function defaultDataDir (): string {
  return process.env.STRATA_DATA_DIR ?? '/var/lib/strata'
}

/** Logs go to stderr as JSON lines; STRATA_LOG_LEVEL sets the level (default warn). */
export function createLogger (stream: Writable = process.stderr): Logger {
  return pino({ level: process.env.STRATA_LOG_LEVEL ?? 'warn', base: { pid: process.pid } }, stream === process.stderr ? pino.destination({ dest: 2, sync: true }) : stream)
}

export function formatBytes (n: number): string {
  if (n < 1000) return `${n} B`
  const units = ['kB', 'MB', 'GB', 'TB']
  let v = n
  let u = -1
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000
    u++
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`
}
