import { closeSync, openSync, readFileSync, statSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { flock } from '@strata/sys'
import type { Logger } from 'pino'
import { StoreBusyError, StoreLockedError } from './errors.ts'

/**
 * Three flock'd files under the data dir (the kernel drops each when its holder
 * dies, even by SIGKILL):
 * - `lock`: held exclusively by whoever has the index open: an exclusive opener
 *   (`openStore`, the daemon) for its whole life, a shared store for one call at a time;
 * - `lock.shared`: held shared by every shared store for its life, and exclusively by
 *   an exclusive opener, so that neither kind starts while the other is there;
 * - `lock.waiting`: held shared by whoever waits for `lock`, so that a shared store
 *   holding it knows to let go instead of keeping it for its next call.
 */
const MAIN = 'lock'
const USERS = 'lock.shared'
const WAITING = 'lock.waiting'

/** Polls for a lock from this often up to MAX_POLL_MS: a shared store's turns are short. */
const FIRST_POLL_MS = 1
const MAX_POLL_MS = 20

export interface LockWait {
  wait: boolean
  signal?: AbortSignal | undefined
  log: Logger
  /** Fail with StoreBusyError once a wait has lasted this long. Default: no bound. */
  waitMs?: number | undefined
  /** Called once a wait has lasted `noticeMs` (default 0: at the first refusal). */
  onWait?: (() => void) | undefined
  noticeMs?: number | undefined
}

/**
 * Holds the store exclusively for as long as it is open (openStore, the daemon),
 * so that a second process waits for the first instead of failing on LevelDB's
 * own lock. Takes `lock.shared` first: a shared store's user keeps it from starting.
 */
export async function acquireLock (dataDir: string, opts: LockWait): Promise<() => void> {
  const users = await take(dataDir, USERS, true, opts)
  try {
    const main = await take(dataDir, MAIN, true, opts)
    return () => {
      main()
      users()
    }
  } catch (err) {
    users()
    throw err
  }
}

/** What a shared store holds for its life: `lock.shared`, shared. */
export async function acquireUse (dataDir: string, opts: LockWait): Promise<() => void> {
  return await take(dataDir, USERS, false, opts)
}

/** What a shared store holds while a call is in flight: `lock`, exclusive; it says it waits while it does. */
export async function acquireTurn (dataDir: string, opts: LockWait): Promise<() => void> {
  return await take(dataDir, MAIN, true, opts)
}

/** Whether another process waits for `lock` now. */
export function othersWaiting (dataDir: string): boolean {
  return heldElsewhere(`${dataDir}/${WAITING}`, 'a')
}

/** Whether a live process holds an flock on the file at `path` (opened with `flags`; a file that cannot be opened is held by nobody). */
export function heldElsewhere (path: string, flags: 'r' | 'a'): boolean {
  let fd: number
  try {
    fd = openSync(path, flags)
  } catch {
    return false
  }
  try {
    return !flock(fd, { exclusive: true, wait: false })
  } finally {
    closeSync(fd)
  }
}

async function take (dataDir: string, name: string, exclusive: boolean, opts: LockWait): Promise<() => void> {
  const fd = openSync(`${dataDir}/${name}`, 'a')
  let waiting: number | undefined
  const started = performance.now()
  let told = false
  try {
    for (let delay = FIRST_POLL_MS; ; delay = Math.min(MAX_POLL_MS, delay * 2)) {
      if (flock(fd, { exclusive, wait: false })) {
        let held = true
        return () => {
          if (held) closeSync(fd)
          held = false
        }
      }
      if (!opts.wait) throw new StoreLockedError(dataDir)
      const waited = performance.now() - started
      if (opts.waitMs !== undefined && waited >= opts.waitMs) throw new StoreBusyError(dataDir, opts.waitMs, lockHolder(`${dataDir}/${name}`))
      if (name === MAIN && waiting === undefined) waiting = signalWaiting(dataDir)
      if (!told && waited >= (opts.noticeMs ?? 0)) {
        told = true
        opts.log.info({ dataDir }, 'waiting for another strata process to release the store')
        opts.onWait?.()
      }
      await sleep(opts.waitMs !== undefined ? Math.max(1, Math.min(delay, opts.waitMs - waited)) : delay, undefined, { signal: opts.signal })
    }
  } catch (err) {
    closeSync(fd)
    throw err
  } finally {
    if (waiting !== undefined) closeSync(waiting)
  }
}

/** Holds `lock.waiting` shared while this process waits; undefined when the holder is testing it at this instant (the next poll tries again). */
function signalWaiting (dataDir: string): number | undefined {
  const fd = openSync(`${dataDir}/${WAITING}`, 'a')
  if (flock(fd, { exclusive: false, wait: false })) return fd
  closeSync(fd)
  return undefined
}

/** The process holding an flock on `path`, from /proc/locks: its pid and command line, when the kernel says. */
export function lockHolder (path: string): { pid: number, command: string } | undefined {
  try {
    const ino = statSync(path).ino
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/)
      // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiter's line starts "1: -> FLOCK".
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
