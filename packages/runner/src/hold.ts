import { closeSync, fstatSync, openSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { flock } from '@strata/sys'
import { takeLease } from '@strata/store'
import type { Lease } from '@strata/store'
import type { RunnerContext } from './context.ts'
import { DiskFullError } from './errors.ts'
import type { Emit } from './events.ts'
import { NEW_SCRATCH_PREFIX, sweepSpills } from './scratch.ts'
import type { Spill } from './scratch.ts'

/**
 * What a run holds until it ends: a lease on its layers, the run dirs of steps whose
 * result was not captured (mounted as lower dirs), and once the data dir's filesystem
 * is full, caching off and the scratch space used instead.
 */
export interface Hold {
  lease: Lease
  dirs: Array<{ dir: string, fd: number }>
  cacheOff: boolean
  spill?: Spill
}

/** A lease on the layers this run mounts (under the store's data dir, where its collector looks). */
export function takeHold (ctx: RunnerContext): Hold {
  return { lease: takeLease(ctx.store.dataDir), dirs: [], cacheOff: false }
}

export async function dropHold (hold: Hold): Promise<void> {
  hold.lease.release()
  try {
    for (const { dir, fd } of hold.dirs) {
      closeSync(fd)
      await rm(dir, { recursive: true, force: true })
    }
  } finally {
    await hold.spill?.release()
  }
}

/** Turns caching off for the rest of the run, once, and says so. */
export function cacheOff (ctx: RunnerContext, hold: Hold, step: string, cause: unknown, emit: Emit): void {
  if (hold.cacheOff) return
  hold.cacheOff = true
  const error = cause instanceof DiskFullError ? cause : new DiskFullError(ctx.dataDir, { cause })
  ctx.log.info({ err: error, step }, 'caching is off for the rest of the run')
  emit({ type: 'cache-off', step, error })
}

/** Where the claim files of keys being built live (claim.ts): a key's file, locked by the process building it. */
export function claimsDir (dataDir: string): string {
  return `${dataDir}/runner/claims`
}

/**
 * Removes scratch dirs, and unmounts scratch space, whose owner is gone (it held an flock on `lock` while alive);
 * and claim files no live process holds (a build killed mid-step leaves its own), so that their dir does not grow.
 */
export async function sweepRuns (ctx: RunnerContext): Promise<void> {
  await sweepSpills(ctx.log)
  sweepClaims(claimsDir(ctx.dataDir))
  const root = `${ctx.dataDir}/runner/run`
  for (const name of readdirSync(root)) {
    const dir = `${root}/${name}`
    // Being made by another runner (makeScratch), unless abandoned long ago.
    if (name.startsWith(NEW_SCRATCH_PREFIX) && !olderThan(dir, ABANDONED_NEW_SCRATCH_MS)) continue
    let fd: number | undefined
    try {
      fd = openSync(`${dir}/lock`, 'r')
      if (!flock(fd, { exclusive: true, wait: false })) continue
    } catch {
      // no lock file: creation was interrupted
    } finally {
      if (fd !== undefined) closeSync(fd)
    }
    ctx.log.info({ dir }, 'removing a scratch dir left by a dead run')
    rmSync(dir, { recursive: true, force: true })
  }
}

/** A `.new-` scratch dir this old was left by a runner that died making it. */
const ABANDONED_NEW_SCRATCH_MS = 10 * 60_000

function olderThan (path: string, ms: number): boolean {
  try {
    return Date.now() - statSync(path).mtimeMs > ms
  } catch {
    return false // gone meanwhile
  }
}

function sweepClaims (dir: string): void {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  for (const name of names) {
    let fd: number | undefined
    try {
      fd = openSync(`${dir}/${name}`, 'r')
      if (!flock(fd, { exclusive: true, wait: false })) continue
      // Who removes a claim file holds its lock, so the file at the path stays the one locked here, or another.
      const held = fstatSync(fd)
      const there = statSync(`${dir}/${name}`)
      if (held.ino === there.ino && held.dev === there.dev) unlinkSync(`${dir}/${name}`)
    } catch {
      // gone meanwhile: its holder released it
    } finally {
      if (fd !== undefined) closeSync(fd)
    }
  }
}
