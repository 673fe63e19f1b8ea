import { appendFileSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { flock } from '@strata/sys'

/**
 * A lease keeps layers from garbage collection while a process uses them (mounts
 * them, or is about to). It is a file under `<dataDir>/leases/` listing layer
 * roots, one a line, flock'ed by its holder: the kernel drops the lock when the
 * holder dies, so a crashed runner pins nothing. A file nobody holds is a record
 * of past use: the collector reads it as "used at the file's mtime" and deletes it.
 */
export interface Lease {
  readonly path: string
  /** Adds `root` to the lease; call it before checking the layer is there, so a collection in between cannot miss it. */
  add (root: string): void
  /** Ends the lease (the file stays, as a record of use, until the next collection reads it). */
  release (): void
}

export function leaseDir (dataDir: string): string {
  return `${dataDir}/leases`
}

/**
 * Lease files of ended holders kept at most, for a store that is not collected or
 * reopened for a long time (a daemon without a budget): beyond this, taking a lease
 * deletes them, losing only their record of use.
 */
export const MAX_LEASE_FILES = 1000

/** Takes a new lease under `dataDir`. The file is locked before it is visible, so no collector sees it unheld. */
export function takeLease (dataDir: string): Lease {
  const dir = leaseDir(dataDir)
  mkdirSync(dir, { recursive: true })
  if (readdirSync(dir).length >= MAX_LEASE_FILES) removeEnded(scanLeases(dataDir))
  const name = `${process.pid}-${randomBytes(6).toString('hex')}`
  const tmp = `${dir}/.${name}`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    flock(fd, { exclusive: true, wait: false })
    renameSync(tmp, `${dir}/${name}`)
  } catch (err) {
    closeSync(fd)
    throw err
  }
  const path = `${dir}/${name}`
  const roots = new Set<string>()
  let open = true
  return {
    path,
    add (root: string): void {
      if (!open) throw new Error('the lease was released')
      if (roots.has(root)) return
      roots.add(root)
      appendFileSync(fd, `${root}\n`)
    },
    release (): void {
      if (open) closeSync(fd)
      open = false
    }
  }
}

export interface LeaseScan {
  /** Roots held by a live process. */
  held: Set<string>
  /** Roots named by leases whose holder has ended, with when the lease was last written. */
  used: Map<string, number>
  /** Lease files of ended holders, to delete once their use has been recorded. */
  ended: string[]
}

/** Bounds what one lease file may make the collector read. */
const MAX_LEASE_BYTES = 1024 * 1024
const ROOT = /^[a-z0-9]{1,128}$/

/** Reads every lease under `dataDir`: which roots are held now, and which were used by holders since gone. */
export function scanLeases (dataDir: string): LeaseScan {
  const dir = leaseDir(dataDir)
  const out: LeaseScan = { held: new Set(), used: new Map(), ended: [] }
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return out
  }
  for (const name of names) {
    const path = `${dir}/${name}`
    let fd: number
    try {
      fd = openSync(path, 'r')
    } catch {
      continue // released and removed meanwhile
    }
    try {
      const st = statSync(path)
      // A dot file is a lease being created, locked before its rename: skip it unless its creator died.
      const free = flock(fd, { exclusive: true, wait: false })
      if (name.startsWith('.') && !free) continue
      const text = st.size <= MAX_LEASE_BYTES ? readFileSync(fd, 'utf8') : ''
      for (const root of text.split('\n')) {
        if (!ROOT.test(root)) continue
        if (!free) out.held.add(root)
        else out.used.set(root, Math.max(out.used.get(root) ?? 0, st.mtimeMs))
      }
      if (free) out.ended.push(path)
    } finally {
      closeSync(fd)
    }
  }
  return out
}

export function removeEnded (scan: LeaseScan): void {
  for (const path of scan.ended) {
    try {
      unlinkSync(path)
    } catch {
      // already gone
    }
  }
}
