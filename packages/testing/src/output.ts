import { Writable } from 'node:stream'
import { pino } from 'pino'
import type { Logger } from 'pino'

/** A stream that keeps what is written to it, as text. */
export class Sink extends Writable {
  text = ''
  override _write (chunk: Buffer, _enc: string, cb: () => void): void {
    this.text += chunk.toString()
    cb()
  }
}

/** A debug-level logger whose lines are kept, parsed, so a test can assert on what was logged (match `event`, not `msg`). */
export function memoryLogger (): { logger: Logger, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'debug' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>) } })
  return { logger, lines }
}
