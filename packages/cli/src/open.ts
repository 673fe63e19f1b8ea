import { existsSync, readFileSync, statSync } from 'node:fs'
import { openStore, StoreLockedError } from '@strata/store'
import type { LocalStore, Store } from '@strata/store'
// Types only: the client module (node:http) loads when a daemon's socket is there.
import type { DaemonClient } from '@strata/daemon/client'
import type { ArgValues, CommandContext } from './context.ts'
import { UsageError } from './context.ts'

/** `--wait-timeout DURATION`: how long a command waits for another process to release the store. */
export const waitFlag = { 'wait-timeout': { type: 'string' } } as const
export const WAIT_USAGE = '[--wait-timeout DURATION]'
const DEFAULT_WAIT_MS = 30_000

/** Another process kept the store past the wait timeout. */
export class StoreBusyError extends Error {
  override name = 'StoreBusyError'
  readonly code = 'ERR_STORE_BUSY'
}

/** `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds; `fallback` without the flag. */
export function waitTimeoutOf (values: ArgValues, fallback = DEFAULT_WAIT_MS): number {
  const v = values['wait-timeout']
  if (typeof v !== 'string') return fallback
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v)
  if (m === null) throw new UsageError(`--wait-timeout: ${JSON.stringify(v)} is not a duration (e.g. 500ms, 30s, 2m)`)
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h' ?? 's'])
}

/** The process holding `<dataDir>/lock` (an flock), from /proc/locks: its pid and command line, when the kernel says. */
export function lockHolder (dataDir: string): { pid: number, command: string } | undefined {
  try {
    const ino = statSync(`${dataDir}/lock`).ino
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/)
      // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
      if (f[1] !== 'FLOCK' || Number(f[5]?.split(':')[2]) !== ino) continue
      const pid = Number(f[4])
      let command = ''
      try {
        command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '').slice(0, 8).join(' ').slice(0, 300)
      } catch {
        // The holder may have exited since: its pid is still worth naming.
      }
      return { pid, command }
    }
  } catch {
    // No /proc/locks (not Linux) or no lock file: the holder stays unnamed.
  }
  return undefined
}

const holderText = (dataDir: string): string => {
  const h = lockHolder(dataDir)
  return h === undefined ? 'another strata process' : `another strata process (pid ${h.pid}${h.command !== '' ? `: ${h.command}` : ''})`
}

/**
 * Opens the store; when another strata process holds it, says which and for how
 * long it waits, and fails with StoreBusyError once `--wait-timeout` (default
 * `defaultWaitMs`, 30 s; Infinity for `strata run`, which queues behind another run)
 * has passed.
 */
export async function openStoreFor (ctx: CommandContext, dataDir: string, values: ArgValues = {}, defaultWaitMs = DEFAULT_WAIT_MS): Promise<Store & LocalStore> {
  const waitMs = waitTimeoutOf(values, defaultWaitMs)
  try {
    return await openStore({ dataDir, logger: ctx.logger, signal: ctx.signal, wait: false, pool: ctx.pool })
  } catch (err) {
    if (!(err instanceof StoreLockedError)) throw err
  }
  const limit = Number.isFinite(waitMs) ? `up to ${waitMs / 1000}s (--wait-timeout)` : 'until it is done (--wait-timeout to bound it)'
  ctx.stderr.write(`strata: waiting ${limit} for ${holderText(dataDir)} to finish with ${dataDir}\n`)
  const timeout = Number.isFinite(waitMs) ? AbortSignal.timeout(waitMs) : new AbortController().signal
  try {
    return await openStore({ dataDir, logger: ctx.logger, signal: AbortSignal.any([ctx.signal, timeout]), wait: true, pool: ctx.pool })
  } catch (err) {
    if (!timeout.aborted || ctx.signal.aborted) throw err
    throw new StoreBusyError(`${holderText(dataDir)} still holds ${dataDir} after ${waitMs / 1000}s (--wait-timeout)`, { cause: err })
  }
}

/** The daemon serving `dataDir`, when its socket is there and it answers; else undefined (the caller opens the store). */
export async function daemonFor (ctx: CommandContext, dataDir: string): Promise<DaemonClient | undefined> {
  if (!existsSync(`${dataDir}/strata.sock`)) return undefined
  const { connectDaemon } = await import('@strata/daemon/client')
  return await connectDaemon(dataDir, { signal: ctx.signal })
}
