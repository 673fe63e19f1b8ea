import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync, renameSync } from 'node:fs'
import { mkdir, mkdtemp, rm, rmdir, statfs } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { promisify } from 'node:util'
import type { Logger } from 'pino'
import { flock } from '@strata/sys'
import { ScratchError } from './errors.ts'
import { prepareRunDir } from './sandbox.ts'

const run = promisify(execFile)
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** The mount source of spill tmpfs mounts: how sweepSpills() knows them. */
const SPILL_SOURCE = 'strata-spill'
/** Where a spill's mount point may be made, first that works: off the data dir's filesystem, which is full. */
const SPILL_PARENTS = (): string[] => [...new Set([tmpdir(), '/run', '/dev/shm'])]

/** Below this free space, or these free inodes, the data dir's filesystem counts as full before a step starts. */
const MIN_FREE_BYTES = 1024 * 1024
const MIN_FREE_INODES = 64

/** Whether `err`, or an error that caused it, says a filesystem is full or over quota. */
export function isDiskFull (err: unknown): boolean {
  let e: unknown = err
  for (let depth = 0; depth < 8 && typeof e === 'object' && e !== null; depth++) {
    const { code, message } = e as { code?: unknown, message?: unknown }
    if (code === 'ENOSPC' || code === 'EDQUOT') return true
    // LevelDB reports it in words only ("IO error: ...: No space left on device").
    if (typeof message === 'string' && /No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b/.test(message)) return true
    e = (e as { cause?: unknown }).cause
  }
  return false
}

/** Whether the filesystem holding `path` has (almost) no free space or inodes left. Root may use the reserved blocks, so those count. */
export async function isFull (path: string): Promise<boolean> {
  const s = await statfs(path)
  return s.bfree * s.bsize < MIN_FREE_BYTES || (s.files > 0 && s.ffree < MIN_FREE_INODES)
}

/** A step's scratch dir, prepared for its overlay (see prepareRunDir), and the flock that marks it in use. */
export interface Scratch {
  runDir: string
  lockFd: number
  lowerOption: string
}

/** Scratch dirs being made have this prefix until their lock is held (see makeScratch). */
export const NEW_SCRATCH_PREFIX = '.new-'

/**
 * Makes a scratch dir under `root` for a step over `lowers`; on failure nothing of it is left.
 * The dir is made under a `.new-` name and takes its final name once its `lock` is held:
 * another runner's sweep (hold.ts) never sees a live dir at its final name unlocked, and
 * leaves `.new-` dirs alone until they are long abandoned.
 */
export async function makeScratch (root: string, lowers: readonly string[], base: string): Promise<Scratch> {
  const name = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
  const making = `${root}/${NEW_SCRATCH_PREFIX}${name}`
  const runDir = `${root}/${name}`
  await mkdir(making, { recursive: true })
  let lockFd: number | undefined
  let dir = making
  try {
    lockFd = openSync(`${making}/lock`, 'w')
    flock(lockFd, { exclusive: true, wait: false })
    renameSync(making, runDir)
    dir = runDir
    return { runDir, lockFd, lowerOption: await prepareRunDir(runDir, lowers, base) }
  } catch (err) {
    if (lockFd !== undefined) closeSync(lockFd)
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

/**
 * Scratch space off the data dir's filesystem once that is full: a tmpfs, mounted
 * for the rest of a run, that holds the upper and work dirs of its steps (which must
 * share a filesystem) and keeps each upper as a lower dir for the steps after it.
 */
export interface Spill {
  /** Where scratch dirs go (the tmpfs root). */
  readonly dir: string
  /** Unmounts the tmpfs and removes its mount point; whatever is in it goes. */
  release (): Promise<void>
}

/**
 * Mounts a spill tmpfs (default size: half the RAM, used only as steps write). It
 * holds a flock'd `lock` file while in use, so that sweepSpills() of another
 * process leaves it alone and takes it once this process is gone.
 */
export async function mountSpill (log: Logger): Promise<Spill> {
  let dir: string | undefined
  const tried: string[] = []
  for (const parent of SPILL_PARENTS()) {
    try {
      dir = await mkdtemp(`${parent}/strata-spill-`)
      break
    } catch (err) {
      tried.push(`${parent}: ${(err as Error).message}`)
    }
  }
  if (dir === undefined) throw new ScratchError(`cannot make a mount point for scratch space (${tried.join('; ')})`)
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'mode=0700', SPILL_SOURCE, dir], { env: { PATH: HOST_PATH } })
  } catch (err) {
    await rmdir(dir).catch(() => {})
    throw new ScratchError(`cannot mount a tmpfs on ${dir} for scratch space: ${(err as { stderr?: string }).stderr?.trim() ?? (err as Error).message}`, { cause: err })
  }
  let fd: number
  try {
    // Locked before it gets its name: a sweep never sees an unlocked `lock` of a live spill.
    fd = openSync(`${dir}/.lock`, 'w')
    flock(fd, { exclusive: true, wait: false })
    renameSync(`${dir}/.lock`, `${dir}/lock`)
  } catch (err) {
    await unmount(dir, log)
    throw new ScratchError(`cannot lock the scratch space on ${dir}: ${(err as Error).message}`, { cause: err })
  }
  log.info({ dir }, 'scratch space mounted off the full data dir filesystem')
  const mounted = dir
  let released = false
  return {
    dir: mounted,
    async release (): Promise<void> {
      if (released) return
      released = true
      closeSync(fd)
      await unmount(mounted, log)
    }
  }
}

async function unmount (dir: string, log: Logger): Promise<void> {
  try {
    await run('umount', [dir], { env: { PATH: HOST_PATH } })
  } catch (err) {
    // Busy (a process left in it): detach it, the kernel frees it when the last user goes.
    log.warn({ err, dir }, 'scratch space busy: detaching it')
    await run('umount', ['-l', dir], { env: { PATH: HOST_PATH } }).catch((e: unknown) => log.warn({ err: e, dir }, 'cannot unmount scratch space'))
  }
  await rmdir(dir).catch((err: unknown) => log.warn({ err, dir }, 'cannot remove the scratch mount point'))
}

/** Unmounts the spill tmpfs mounts of processes that have gone (their `lock` is no longer held). */
export async function sweepSpills (log: Logger): Promise<void> {
  let mountinfo: string
  try {
    mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return
  }
  for (const line of mountinfo.split('\n')) {
    const [left, right] = line.split(' - ')
    const [fstype, source] = (right ?? '').split(' ')
    const mnt = left?.split(' ')[4]
    if (fstype !== 'tmpfs' || source !== SPILL_SOURCE || mnt === undefined) continue
    const dir = unescapeMountPath(mnt)
    let fd: number | undefined
    try {
      fd = openSync(`${dir}/lock`, 'r')
      if (!flock(fd, { exclusive: true, wait: false })) continue
    } catch {
      continue // no lock yet: being set up
    } finally {
      if (fd !== undefined) closeSync(fd)
    }
    log.info({ dir }, 'unmounting scratch space left by a dead run')
    await unmount(dir, log)
  }
}

/** mountinfo writes space, tab, newline and backslash in paths as octal escapes. */
function unescapeMountPath (p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}
