import { constants } from 'node:fs'
import { open, stat, unlink } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { setTimeout as delay } from 'node:timers/promises'
import type { CID } from 'multiformats/cid'
import { flock } from '@strata/sys'
import type { FleetClaim, RunnerContext, StepContext } from './context.ts'
import { StepCancelledError } from './errors.ts'
import { claimsDir } from './hold.ts'
import { lookupStep } from './lookup.ts'
import type { Hit } from './lookup.ts'

/** How long a step waits for another build of its key when RunOptions.claimWaitMs says nothing. */
export const DEFAULT_CLAIM_WAIT_MS = 30 * 60_000
/** setTimeout's limit: a longer wait would fire at once. */
const MAX_WAIT_MS = 2 ** 31 - 1
/** Between two attempts at a local claim another process holds: short, so that a waiter hits soon after the build. */
const POLL_MIN_MS = 25
const POLL_MAX_MS = 250

/** The claim on a key this step builds: released once its result is recorded, or once it failed. */
export interface Claimed {
  release (outcome: 'built' | 'failed'): Promise<void>
}

/** A key a step of this runner is building: other steps with that key wait for `done`. */
export interface ProcessClaim {
  readonly step: string
  readonly done: Promise<void>
}

/**
 * After a miss, claims the key before the step runs, so that one build per key runs at a
 * time: among the steps of this runner, the processes of this machine (an flock the kernel
 * drops when its holder dies) and, with `ctx.remote.claim`, the fleet. While another holds
 * it, the step waits (bounded by `s.claimWaitMs`, never past its timeout) and looks the key
 * up again: `found` when that build's record is here. Past the bound the step runs anyway,
 * holding what it got: a claim makes a build slower at worst, never wrong.
 */
export async function claimStep (ctx: RunnerContext, s: StepContext, key: CID): Promise<{ found: Hit } | { held: Claimed }> {
  const releases: Array<(outcome: 'built' | 'failed') => Promise<void>> = []
  const claimed: Claimed = {
    release: async (outcome) => {
      // Innermost first: the fleet hears before this machine's waiters look again.
      for (const release of releases.splice(0).reverse()) {
        try {
          await release(outcome)
        } catch (err) {
          ctx.log.info({ err, step: s.step.name, key: key.toString() }, 'releasing a claim failed')
        }
      }
    }
  }
  // Steps that look nothing up would not use another's build.
  if (!s.step.cache || s.noCache || s.hold.cacheOff) return { held: claimed }
  const k = key.toString()
  const deadline = performance.now() + waitBound(s)
  const waiting = waitReporter(s, k)
  const again = async (): Promise<{ found: Hit } | undefined> => {
    const found = await lookupStep(ctx, s, key)
    if (!('record' in found)) return undefined
    await claimed.release('failed')
    return { found }
  }
  try {
    // This runner: a step of the same or another run building the key.
    for (let other = ctx.claims.get(k); other !== undefined; other = ctx.claims.get(k)) {
      waiting('process', other.step)
      if (!await settledBy(other.done, deadline, s)) return passed(ctx, s, k, claimed)
      const hit = await again()
      if (hit !== undefined) return hit
    }
    releases.push(claimInProcess(ctx, k, s.step.name))

    // This machine: another process building the key.
    let local: Awaited<ReturnType<typeof claimLocal>>
    try {
      local = await claimLocal(`${claimsDir(ctx.dataDir)}/${k}`, deadline, s, (pid) => waiting('local', pid))
    } catch (err) {
      if (err instanceof StepCancelledError) throw err
      // A full disk or a read-only data dir: the step builds without this machine's claim.
      ctx.log.info({ err, step: s.step.name, key: k }, 'cannot claim the key on this machine: building it anyway')
      return { held: claimed }
    }
    if (local === undefined) return passed(ctx, s, k, claimed)
    releases.push(local.release)
    if (local.waited) {
      const hit = await again()
      if (hit !== undefined) return hit
    }

    // The fleet: a trusted peer building the key.
    const remote = ctx.remote
    if (remote?.claim === undefined) return { held: claimed }
    for (;;) {
      let fleet: FleetClaim
      try {
        fleet = await remote.claim(k, { scope: ctx.scope, signal: s.signal })
      } catch (err) {
        cancelled(s)
        ctx.log.info({ err, step: s.step.name, key: k }, 'cannot claim the key in the fleet: building it anyway')
        return { held: claimed }
      }
      if (fleet.status === 'granted') {
        releases.push(fleet.release)
        return { held: claimed }
      }
      waiting('peer', fleet.holder)
      const timeoutMs = Math.min(deadline - performance.now(), MAX_WAIT_MS)
      if (timeoutMs <= 0) return passed(ctx, s, k, claimed)
      let settled: Awaited<ReturnType<typeof fleet.settled>>
      try {
        settled = await fleet.settled({ signal: s.signal, timeoutMs })
      } catch (err) {
        cancelled(s)
        ctx.log.info({ err, step: s.step.name, key: k }, 'lost track of the fleet\'s claim: building the key anyway')
        return { held: claimed }
      }
      if (settled === 'timeout') return passed(ctx, s, k, claimed)
      const hit = await again()
      if (hit !== undefined) return hit
    }
  } catch (err) {
    await claimed.release('failed')
    throw err
  }
}

/** How long the step may wait: its claim wait, never past its own timeout. */
function waitBound (s: StepContext): number {
  const wait = s.claimWaitMs ?? DEFAULT_CLAIM_WAIT_MS
  return Math.max(0, Math.min(wait, s.step.timeoutMs ?? Infinity, MAX_WAIT_MS))
}

/** Emits `wait` once per holder waited for. */
function waitReporter (s: StepContext, key: string): (where: 'process' | 'local' | 'peer', holder: string) => void {
  let last = ''
  return (where, holder) => {
    if (`${where} ${holder}` === last) return
    last = `${where} ${holder}`
    // A step waiting for another build takes no job slot meanwhile (the runner takes one back before it goes on).
    s.slot?.release()
    s.emit({ type: 'wait', step: s.step.name, key, holder, where })
  }
}

function passed (ctx: RunnerContext, s: StepContext, key: string, claimed: Claimed): { held: Claimed } {
  ctx.log.info({ step: s.step.name, key }, 'waited for another build of the key as long as allowed: building it too')
  return { held: claimed }
}

function cancelled (s: StepContext): void {
  if (s.signal?.aborted === true) throw new StepCancelledError(s.step.name, { cause: s.signal.reason })
}

/** Whether `done` settled before the deadline; a cancel is the step's. */
async function settledBy (done: Promise<void>, deadline: number, s: StepContext): Promise<boolean> {
  cancelled(s)
  const stop = new AbortController()
  const signal = s.signal !== undefined ? AbortSignal.any([s.signal, stop.signal]) : stop.signal
  try {
    return await Promise.race([done.then(() => true), delay(Math.max(0, deadline - performance.now()), false, { signal })])
  } catch (err) {
    cancelled(s)
    throw err
  } finally {
    stop.abort()
  }
}

function claimInProcess (ctx: RunnerContext, key: string, step: string): () => Promise<void> {
  const { promise, resolve } = Promise.withResolvers<void>()
  const mine: ProcessClaim = { step, done: promise }
  ctx.claims.set(key, mine)
  return async () => {
    if (ctx.claims.get(key) === mine) ctx.claims.delete(key)
    resolve()
  }
}

/**
 * The flock on the key's claim file, tried without blocking until it is free or the deadline
 * passes (undefined). The holder writes its pid there, for the waiters to name it, and removes
 * the file as it releases: a waiter that then locks the removed file tries the new one.
 */
async function claimLocal (path: string, deadline: number, s: StepContext, onHolder: (pid: string) => void): Promise<{ release: () => Promise<void>, waited: boolean } | undefined> {
  let waited = false
  for (let pause = POLL_MIN_MS; ; pause = Math.min(pause * 2, POLL_MAX_MS)) {
    cancelled(s)
    const file = await open(path, constants.O_RDWR | constants.O_CREAT)
    let mine = false
    try {
      if (flock(file.fd, { exclusive: true, wait: false })) {
        // Who removes a claim file holds its lock: the file at the path is the one locked, or it was removed.
        if (await sameFile(file, path)) {
          await file.truncate(0)
          await file.write(`${process.pid}\n`, 0)
          mine = true
          return {
            waited,
            release: async () => {
              try {
                await unlink(path)
              } finally {
                await file.close()
              }
            }
          }
        }
      } else {
        const { buffer, bytesRead } = await file.read(Buffer.alloc(32), 0, 32, 0)
        const pid = buffer.subarray(0, bytesRead).toString().trim()
        // A holder that just took the lock writes its pid next: named at the next attempt.
        if (pid !== '' || waited) onHolder(pid)
      }
    } finally {
      if (!mine) await file.close()
    }
    waited = true
    const left = deadline - performance.now()
    if (left <= 0) return undefined
    await pauseFor(Math.min(pause, left), s)
  }
}

async function pauseFor (ms: number, s: StepContext): Promise<void> {
  try {
    await delay(ms, undefined, { signal: s.signal })
  } catch (err) {
    cancelled(s)
    throw err
  }
}

async function sameFile (file: FileHandle, path: string): Promise<boolean> {
  try {
    const [held, there] = await Promise.all([file.stat(), stat(path)])
    return held.ino === there.ino && held.dev === there.dev
  } catch {
    return false
  }
}
