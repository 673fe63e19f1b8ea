import { chmodSync, lstatSync, readdirSync, rmSync } from 'node:fs'

/**
 * Removes a tree, also one holding read-only directories (a Go module cache has
 * them, and so may a layer from a peer): on EACCES/EPERM it gives the owner rwx on
 * every directory (never following a symlink) and tries again.
 */
export function removeTree (path: string): void {
  try {
    rmSync(path, { recursive: true, force: true })
    return
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'EACCES' && code !== 'EPERM') throw err
  }
  const open = (p: string): void => {
    let st
    try {
      st = lstatSync(p)
    } catch {
      return
    }
    if (!st.isDirectory()) return
    chmodSync(p, (st.mode & 0o7777) | 0o700)
    for (const name of readdirSync(p)) open(`${p}/${name}`)
  }
  open(path)
  rmSync(path, { recursive: true, force: true })
}
