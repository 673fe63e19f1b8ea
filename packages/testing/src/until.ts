import { setTimeout as delay } from 'node:timers/promises'

/**
 * Polls `cond` every `everyMs` until it holds; throws, naming `what`, once `timeoutMs`
 * passed. A wait in a test always ends: a condition that never comes fails the test
 * instead of keeping its process alive.
 */
export async function until (what: string, cond: () => boolean | Promise<boolean>, opts: { timeoutMs?: number, everyMs?: number } = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 60_000
  const deadline = performance.now() + timeoutMs
  while (!await cond()) {
    if (performance.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`)
    await delay(opts.everyMs ?? 20)
  }
}
