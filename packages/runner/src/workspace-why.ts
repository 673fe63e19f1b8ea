import { open, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import type { KeyChange, KeyDescriptor } from './key.ts'
import { diffListings } from './workspace.ts'
import type { WorkspaceScan } from './workspace.ts'

/** Workspace files why() names one by one; past it, one line says how many more. */
const MAX_LISTED = 50

function listingFile (dataDir: string, lastId: string): string {
  return `${dataDir}/runner/ws-last/${lastId}`
}

/**
 * Keeps the listing of the workspace a step last ran or hit with, so that why() can
 * name the files that changed since (the key holds only the listing's digest). The
 * file starts with that digest in hex: when it is already the one kept, nothing is
 * computed or written.
 */
export async function rememberWorkspace (dataDir: string, lastId: string, scan: WorkspaceScan): Promise<void> {
  const file = listingFile(dataDir, lastId)
  const head = Buffer.from(`${Buffer.from(scan.digest).toString('hex')}\n`)
  const have = Buffer.alloc(head.length)
  try {
    const fh = await open(file, 'r')
    try {
      await fh.read(have, 0, head.length, 0)
    } finally {
      await fh.close()
    }
    if (have.equals(head)) return
  } catch {
    // none yet
  }
  await mkdir(`${dataDir}/runner/ws-last`, { recursive: true })
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
  try {
    await writeFile(tmp, Buffer.concat([head, await scan.listing()]), { mode: 0o600 })
    await rename(tmp, file)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

/**
 * `changes` with the workspace's "files changed" replaced by the files themselves,
 * when the listing kept for the previous key is here and `scan` is the current one.
 */
export async function workspaceChanges (changes: KeyChange[], dataDir: string, lastId: string, previous: KeyDescriptor, scan: WorkspaceScan | undefined): Promise<KeyChange[]> {
  const i = changes.findIndex((c) => c.field === 'workspace' && c.change === 'files')
  if (i === -1 || scan === undefined || previous.workspace == null) return changes
  let kept: Buffer
  try {
    kept = await readFile(listingFile(dataDir, lastId))
  } catch {
    return changes
  }
  const nl = kept.indexOf(10)
  if (nl === -1 || kept.toString('latin1', 0, nl) !== Buffer.from(previous.workspace.digest).toString('hex')) return changes
  const diff = diffListings(kept.subarray(nl + 1), await scan.listing())
  const files: KeyChange[] = diff.slice(0, MAX_LISTED).map((d) => ({ field: 'workspace-file', path: d.path, change: d.change }))
  if (diff.length > MAX_LISTED) files.push({ field: 'workspace-more', count: diff.length - MAX_LISTED })
  if (files.length === 0) return changes
  return [...changes.slice(0, i), ...files, ...changes.slice(i + 1)]
}
