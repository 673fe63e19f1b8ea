import { openStore, StoreLockedError } from '@strata/store'
import type { LocalStore, Store } from '@strata/store'
import type { CommandContext } from './context.ts'

/**
 * Opens the store; when another strata process holds it, says so once on stderr
 * and waits for it (a second `strata run` queues behind the first).
 */
export async function openStoreFor (ctx: CommandContext, dataDir: string): Promise<Store & LocalStore> {
  try {
    return await openStore({ dataDir, logger: ctx.logger, signal: ctx.signal, wait: false, pool: ctx.pool })
  } catch (err) {
    if (!(err instanceof StoreLockedError)) throw err
  }
  ctx.stderr.write(`strata: waiting for another strata process to finish with ${dataDir}\n`)
  return await openStore({ dataDir, logger: ctx.logger, signal: ctx.signal, wait: true, pool: ctx.pool })
}
