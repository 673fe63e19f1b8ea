import { closeSync, openSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { flock } from '@strata/sys'
import type { Logger } from 'pino'
import { StoreLockedError } from './errors.ts'

/**
 * Holds `<dataDir>/lock` exclusively for as long as the store is open, so that a
 * second process waits for the first instead of failing on LevelDB's own lock.
 * The kernel drops the lock when the holder dies, even by SIGKILL.
 */
export async function acquireLock (dataDir: string, opts: { wait: boolean, signal?: AbortSignal | undefined, log: Logger }): Promise<() => void> {
  const fd = openSync(`${dataDir}/lock`, 'a')
  let told = false
  try {
    for (;;) {
      if (flock(fd, { exclusive: true, wait: false })) {
        let held = true
        return () => {
          if (held) closeSync(fd)
          held = false
        }
      }
      if (!opts.wait) throw new StoreLockedError(dataDir)
      if (!told) {
        opts.log.info({ dataDir }, 'waiting for another strata process to release the store')
        told = true
      }
      await sleep(100, undefined, { signal: opts.signal })
    }
  } catch (err) {
    closeSync(fd)
    throw err
  }
}
