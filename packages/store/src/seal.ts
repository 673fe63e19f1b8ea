import { closeSync, constants, lstatSync, openSync, readdirSync } from 'node:fs'
import { setImmediate as yieldLoop } from 'node:timers/promises'
import { enableVerity } from '@strata/sys'

/** Errors that say the kernel or the filesystem has no fs-verity. */
const UNSUPPORTED = new Set(['ENOTSUP', 'EOPNOTSUPP', 'ENOTTY', 'ENOSYS'])

/** Files sealed between two turns of the event loop (each costs a hash of the file in the kernel). */
const YIELD_EVERY = 64

/**
 * Turns fs-verity on for every regular file under `dir`. `supported` is false when
 * the first file met says the filesystem cannot (nothing is changed then), and
 * undefined when there was no file to try.
 */
export async function sealTree (dir: string): Promise<{ supported: boolean | undefined, files: number }> {
  let files = 0
  const stack = [dir]
  while (stack.length > 0) {
    const at = stack.pop()!
    for (const d of readdirSync(at, { withFileTypes: true })) {
      const p = `${at}/${d.name}`
      if (d.isDirectory()) stack.push(p)
      // A whiteout is a 0/0 character device; only regular files can be sealed.
      if (!d.isFile() || !lstatSync(p).isFile()) continue
      const fd = openSync(p, constants.O_RDONLY | constants.O_NOFOLLOW)
      try {
        enableVerity(fd)
      } catch (err) {
        if (files === 0 && UNSUPPORTED.has((err as NodeJS.ErrnoException).code ?? '')) return { supported: false, files: 0 }
        throw err
      } finally {
        closeSync(fd)
      }
      if (++files % YIELD_EVERY === 0) await yieldLoop()
    }
  }
  return { supported: files > 0 ? true : undefined, files }
}
