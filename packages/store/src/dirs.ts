import { closeSync, existsSync, mkdirSync, openSync, renameSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { removeTree } from '@strata/chunker'
import { flock } from '@strata/sys'
import { heldElsewhere } from './lock.ts'

const HELD = 'held'

/** Whether a live process holds the staging dir `dir` (made by Dirs.held()). */
export function isHeld (dir: string): boolean {
  return heldElsewhere(`${dir}/${HELD}`, 'r')
}

/** The directories of a data dir: committed layers, and staging for work in progress and trees on their way out. */
export class Dirs {
  readonly dataDir: string

  constructor (dataDir: string) {
    this.dataDir = dataDir
  }

  layer (root: string): string {
    return `${this.dataDir}/layers/${root}`
  }

  /** A new, empty dir under staging/. */
  staging (): string {
    const dir = `${this.dataDir}/staging/${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
    mkdirSync(dir)
    return dir
  }

  /**
   * A new dir under staging/ that recovery leaves alone while this process holds
   * the flock on its `held` file (a shared store packs there between its turns).
   * Made while the caller has the store open, so that no recovery sees it unheld.
   */
  held (): { dir: string, release: () => void } {
    const dir = this.staging()
    let fd: number
    try {
      fd = openSync(`${dir}/${HELD}`, 'w', 0o600)
    } catch (err) {
      removeTree(dir)
      throw err
    }
    flock(fd, { exclusive: true, wait: false })
    let held = true
    return {
      dir,
      release: () => {
        if (!held) return
        held = false
        closeSync(fd)
        removeTree(dir)
      }
    }
  }

  /** Takes a layer dir out of `layers/` and deletes it. */
  hide (root: string): void {
    const dir = this.layer(root)
    if (!existsSync(dir)) return
    const moved = this.staging()
    renameSync(dir, `${moved}/removed`)
    removeTree(moved)
  }
}

/** removeTree off the event loop; a tree that needs its directories opened up first falls back to it. */
export async function removeTreeAsync (path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'EACCES' && code !== 'EPERM') throw err
    removeTree(path)
  }
}
