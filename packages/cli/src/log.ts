import { pino } from 'pino'
import type { DestinationStream, Logger } from 'pino'
import type { Writable } from 'node:stream'

export interface LogInit {
  /** STRATA_LOG_LEVEL; unset or empty: warn, and no JSON lines on stderr in human mode. */
  level?: string | undefined
  /** STRATA_LOG_FILE: the JSON lines are appended there instead of stderr. */
  file?: string | undefined
  /** The command runs with --json: whoever reads it reads JSON, log lines included. */
  json: boolean
  /** Where the words go, and the JSON lines when they go to stderr. */
  stderr: Writable
}

/** STRATA_LOG_LEVEL names no level pino knows. */
export class LogLevelError extends Error {
  override name = 'LogLevelError'
  readonly code = 'ERR_LOG_LEVEL'
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']
const WARN = 40
const ERROR = 50
/** What every line has, or what says nothing to a reader of one line. */
const NOT_SHOWN = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'err', 'component'])

/**
 * The CLI's logger. JSON lines go to STRATA_LOG_FILE when it is set, else to
 * stderr when STRATA_LOG_LEVEL is set or the command runs with --json, else
 * nowhere. Warnings and errors that reach no JSON line on stderr are printed there
 * as one line of words, `strata: warning: MESSAGE (key=value, ...)`, between the
 * command's own lines.
 */
export function createLogger (init: LogInit): Logger {
  const explicit = init.level !== undefined && init.level !== ''
  const level = explicit ? init.level! : 'warn'
  if (!LEVELS.includes(level)) throw new LogLevelError(`STRATA_LOG_LEVEL: ${JSON.stringify(level)} is not a level (${LEVELS.join(', ')})`)
  const file = init.file !== undefined && init.file !== '' ? init.file : undefined
  const jsonOnStderr = file === undefined && (explicit || init.json)
  const json: DestinationStream | undefined = file !== undefined
    ? pino.destination({ dest: file, append: true, mkdir: true, sync: true })
    : jsonOnStderr ? pino.destination({ dest: 2, sync: true }) : undefined
  const stderr = init.stderr
  const sink: DestinationStream = {
    write (line: string): void {
      json?.write(line)
      if (jsonOnStderr) return
      const text = words(line)
      if (text !== undefined) stderr.write(text)
    }
  }
  return pino({ level, base: { pid: process.pid } }, sink)
}

/** A pino line at warn or above as one line of words; undefined below warn. */
export function words (line: string): string | undefined {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(line) as Record<string, unknown>
  } catch {
    return undefined
  }
  const level = typeof o.level === 'number' ? o.level : 0
  if (level < WARN) return undefined
  let text = oneLine(typeof o.msg === 'string' ? o.msg : '')
  const err = o.err as { message?: unknown, code?: unknown } | undefined
  if (err !== undefined && err !== null && typeof err.message === 'string') {
    text += `: ${oneLine(err.message)}${typeof err.code === 'string' ? ` (${err.code})` : ''}`
  }
  const fields = Object.entries(o)
    .filter(([k, v]) => !NOT_SHOWN.has(k) && (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean'))
    .map(([k, v]) => `${k}=${typeof v === 'string' && /^[\w./:@+-]+$/.test(v) ? v : JSON.stringify(v)}`)
  if (fields.length > 0) text += ` (${fields.join(', ')})`
  return `strata: ${level >= ERROR ? 'error' : 'warning'}: ${text}\n`
}

/** The first line of a message, without control characters: a path or a peer's text cannot break the line. */
export function oneLine (s: string): string {
  // eslint-disable-next-line no-control-regex
  return (s.split('\n', 1)[0] ?? '').replace(/[\u0000-\u001f\u007f]/g, ' ').trimEnd()
}
