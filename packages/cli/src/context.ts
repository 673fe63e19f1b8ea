import type { Logger } from 'pino'
import type { Writable } from 'node:stream'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import type { ParseArgsOptionsConfig } from 'node:util'
import type { FsPool } from '@strata/chunker/fs-pool'

/** What every command gets: its arguments, where to print, a logger and the run's cancel signal. */
export interface CommandContext {
  argv: string[]
  stdout: Writable
  stderr: Writable
  logger: Logger
  signal: AbortSignal
  /** File workers the bin started before loading the command, for the store it opens. */
  pool?: FsPool | undefined
}

export interface Command {
  name: string
  summary: string
  usage: string
  run(ctx: CommandContext): Promise<number>
}

/**
 * A mistake in how the command was called (an unknown flag, a missing or extra
 * argument, a value that does not parse): printed with the usage line, exit code 2.
 * A well-formed value that names nothing (a CID not in the store) is a failure, not this.
 */
export class UsageError extends Error {
  override name = 'UsageError'
  readonly code = 'ERR_USAGE'
}

export function defaultDataDir (): string {
  return process.env.STRATA_DATA_DIR ?? '/var/lib/strata'
}

/** `1 layer`, `2 layers`, `0 copies`: a count with its noun agreeing. */
export function count (n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`
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

export type ArgValues = Record<string, string | boolean | Array<string | boolean> | undefined>

/**
 * Parses a command's arguments (every command takes `--data-dir`): an unknown
 * option or a wrong number of positionals is a UsageError.
 */
export function parseCommandArgs (ctx: CommandContext, options: ParseArgsOptionsConfig, positionals: number | 'any'): { values: ArgValues, positionals: string[] } {
  let parsed: { values: ArgValues, positionals: string[] }
  try {
    parsed = parseArgs({ args: ctx.argv, options: { 'data-dir': { type: 'string' }, ...options }, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError(parseArgsMessage(err as Error & { code?: string }), { cause: err })
  }
  if (positionals !== 'any' && parsed.positionals.length !== positionals) {
    throw new UsageError(positionals === 0
      ? `unexpected argument ${JSON.stringify(parsed.positionals[0])}`
      : `expected ${count(positionals, 'argument')}, got ${parsed.positionals.length}`)
  }
  return parsed
}

/** Node's parse error without its advice on positionals that start with '-', which --help covers. */
function parseArgsMessage (err: Error & { code?: string }): string {
  if (err.code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return err.message
  const at = err.message.indexOf('. ')
  return (at > 0 ? err.message.slice(0, at) : err.message).replace(/^Unknown option/, 'unknown option')
}

/**
 * The store directory a command was given, or the default, made absolute against
 * the cwd: layer paths and the links overlayfs follows are built from it.
 */
export function dataDirOf (values: ArgValues): string {
  return resolve(typeof values['data-dir'] === 'string' ? values['data-dir'] : defaultDataDir())
}
