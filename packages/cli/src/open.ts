import { existsSync } from 'node:fs'
import { lockHolder, openSharedStore } from '@strata/store'
import type { SharedStore } from '@strata/store'
// Types only: the client module (node:http) loads when a daemon's socket is there.
import type { DaemonClient } from '@strata/daemon/client'
import type { ArgValues, CommandContext } from './context.ts'
import { UsageError } from './context.ts'

/** `--wait-timeout DURATION`: how long a command waits for another process to release the store. */
export const waitFlag = { 'wait-timeout': { type: 'string' } } as const
export const WAIT_USAGE = '[--wait-timeout DURATION]'
const DEFAULT_WAIT_MS = 30_000
/** A wait shorter than this is a turn of another process, not worth a line. */
const NOTICE_MS = 1000

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

const holderText = (dataDir: string): string => {
  const h = lockHolder(`${dataDir}/lock`)
  return h === undefined ? 'another strata process' : `another strata process (pid ${h.pid}${h.command !== '' ? `: ${h.command}` : ''})`
}

/**
 * Opens the store shared with the other strata processes of this machine: it is
 * held only while a call is in flight (doc/decisions/shared-store.md), so that two
 * runs, or a run and `strata layers`, take turns per call. A call kept waiting
 * (past a second, or half the timeout) says on whom and for how long it waits;
 * past `--wait-timeout` (default `defaultWaitMs`, 30 s; Infinity for `strata run`)
 * it fails with StoreBusyError.
 */
export async function openStoreFor (ctx: CommandContext, dataDir: string, values: ArgValues = {}, defaultWaitMs = DEFAULT_WAIT_MS): Promise<SharedStore> {
  const waitMs = waitTimeoutOf(values, defaultWaitMs)
  const limit = Number.isFinite(waitMs) ? `up to ${waitMs / 1000}s (--wait-timeout)` : 'until it is done (--wait-timeout to bound it)'
  try {
    return await openSharedStore({
      dataDir,
      logger: ctx.logger,
      signal: ctx.signal,
      pool: ctx.pool,
      ...(Number.isFinite(waitMs) ? { waitMs } : {}),
      noticeMs: Math.min(NOTICE_MS, waitMs / 2),
      onWait: () => { ctx.stderr.write(`strata: waiting ${limit} for ${holderText(dataDir)} to finish with ${dataDir}\n`) }
    })
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ERR_STORE_BUSY') throw err
    throw new StoreBusyError(`${holderText(dataDir)} still holds ${dataDir} after ${waitMs / 1000}s (--wait-timeout)`, { cause: err })
  }
}

/** The daemon serving `dataDir`, when its socket is there and it answers; else undefined (the caller opens the store). */
export async function daemonFor (ctx: CommandContext, dataDir: string): Promise<DaemonClient | undefined> {
  if (!existsSync(`${dataDir}/strata.sock`)) return undefined
  const { connectDaemon } = await import('@strata/daemon/client')
  return await connectDaemon(dataDir, { signal: ctx.signal })
}
