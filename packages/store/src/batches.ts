import { pipe } from 'it-pipe'
import type { Index } from './keys.ts'

export type Op = { type: 'put', key: string, value: Uint8Array } | { type: 'del', key: string }

/** Keys written or deleted per index batch: a whole layer's at once would all be held in memory together. */
export const BATCH = 5000

async function * inBatches<T> (source: Iterable<T> | AsyncIterable<T>, size: number): AsyncGenerator<T[]> {
  let batch: T[] = []
  for await (const item of source) {
    batch.push(item)
    if (batch.length >= size) {
      yield batch
      batch = []
    }
  }
  if (batch.length > 0) yield batch
}

/**
 * Writes `ops` to the index a batch at a time, as they come: the stages are the
 * source (a plan's locations, a key scan), the batching, the write. Returns how
 * many were written. A batch is atomic; the whole is not.
 */
export async function writeInBatches (db: Index, ops: Iterable<Op> | AsyncIterable<Op>): Promise<number> {
  return await pipe(
    ops,
    (source) => inBatches(source, BATCH),
    async (batches) => {
      let n = 0
      for await (const batch of batches) {
        await db.batch(batch)
        n += batch.length
      }
      return n
    }
  )
}
