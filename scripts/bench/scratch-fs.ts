// A journaled ext4 of the benchmark's own, on a loop device, for the runs that
// create and delete trees of many files.
//
// Why: an ext4 made without a journal (this VM's root filesystem is one) will not
// hand out an inode freed in the last minutes, and scans past every such inode on
// each create (`recently_deleted` in ext4's inode allocator). A benchmark that
// deletes one rep's 84k files and then creates the next rep's spends most of its
// time in that scan: `tar -xf` of the big tree there ranges from 5 to 45 s. A
// journaled ext4 (what mkfs.ext4 makes by default, and what CI VMs run) has no
// such scan. The image is sparse, has an inode per 4 KiB, and its inode tables
// are written when it is made (so no lazy init runs behind the figures); the loop
// device uses direct I/O (so the host's page cache does not hold the data twice).

import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { beforeRemoval } from './cleanup.ts'

export interface ScratchFs {
  /** Where the filesystem is mounted. */
  readonly dir: string
  /** What it is, for the report. */
  readonly kind: string
  /** Unmounts it and removes the image; also runs on exit and on a terminating signal. */
  remove: () => void
  /** Leaves it in place past the run (the caller says where). */
  keep: () => void
}

function run (cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
}

function attempt (cmd: string, args: string[]): void {
  try {
    run(cmd, args)
  } catch {
    // See remove().
  }
}

/**
 * Makes a `sizeGiB` ext4 (journaled, the mkfs defaults) in a sparse image under
 * `parent`, mounts it on `<parent>/<name>.mnt` and returns it. With `kind` 'here',
 * returns `<parent>/<name>` on the parent's own filesystem instead.
 */
export function scratchFs (parent: string, name: string, sizeGiB: number, kind: 'ext4' | 'here'): ScratchFs {
  if (kind === 'here') {
    const dir = join(parent, name)
    mkdirSync(dir, { recursive: true })
    const remove = (): void => { rmSync(dir, { recursive: true, force: true }) }
    const unregister = beforeRemoval(remove)
    return { dir, kind: `${run('stat', ['-f', '-c', '%T', parent])} (the cache dir's own)`, remove: () => { unregister(); remove() }, keep: unregister }
  }
  mkdirSync(parent, { recursive: true })
  const image = join(parent, `${name}.img`)
  const dir = join(parent, `${name}.mnt`)
  let loop = ''
  let mounted = false
  const remove = (): void => {
    // Lazy: a process still holding a file in it must not keep the image alive
    // past the run; the loop device goes when the last user does. Best effort
    // throughout: this also runs from a signal handler, with nobody to tell.
    if (mounted) attempt('umount', ['-l', dir])
    mounted = false
    if (loop !== '') attempt('losetup', ['-d', loop])
    loop = ''
    rmSync(dir, { recursive: true, force: true })
    rmSync(image, { force: true })
  }
  const unregister = beforeRemoval(remove)
  try {
    rmSync(image, { force: true })
    run('truncate', ['-s', `${sizeGiB}G`, image])
    // An inode per 4 KiB: eight copies of an 85k-entry tree of small files need more
    // than mkfs's default of one per 16 KiB.
    run('mkfs.ext4', ['-q', '-F', '-i', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', image])
    loop = run('losetup', ['--find', '--show', '--direct-io=on', image])
    mkdirSync(dir, { recursive: true })
    run('mount', [loop, dir])
    mounted = true
  } catch (err) {
    unregister()
    remove()
    throw new Error(`cannot make the benchmark's ext4 scratch filesystem (${(err as Error).message.split('\n')[0]}); --fs here runs on the cache dir's own filesystem`, { cause: err })
  }
  return { dir, kind: `ext4 with a journal, ${sizeGiB} GiB loop image on ${loop}, direct I/O`, remove: () => { unregister(); remove() }, keep: unregister }
}
