import { cidString, decodeEntryList, decodeRoot, EntryChecker, manifestLinks } from '@strata/chunker'
import type { Entry } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import { CommitError } from './errors.ts'

/** Where one content block of a layer lives: its CID's text, the file, the range. */
export interface Located {
  cid: string
  path: string
  offset: number
  length: number
}

export interface ManifestBlock {
  cid: CID
  bytes: Uint8Array
}

/** What indexing a layer writes, worked out (and the manifest checked) before anything moves. */
export interface IndexPlan {
  /** Kept as the pack reports them; their keys and values are made a batch at a time, not all at once. */
  locations: Located[]
  entries: number
  size: number
  blocks: number
}

/** Checks a layer's manifest (the root first, then its entry lists in order) and plans its index keys. */
export function planIndex (root: string, blocks: ManifestBlock[]): IndexPlan {
  const decoded = decodeRoot(blocks[0]!.bytes)
  const links = manifestLinks(decoded)
  if (blocks.length !== links.length + 1) throw new CommitError(`manifest of ${root} is incomplete`)
  links.forEach((cid, i) => {
    if (!blocks[i + 1]!.cid.equals(cid)) throw new CommitError(`manifest of ${root} has its blocks out of order`)
  })
  const checker = new EntryChecker(decoded.count, decoded.size)
  const locations: Located[] = []
  const distinct = new Set<string>()
  // Each entry list, followed by its times block from format 2 on.
  const step = decoded.version === 1 ? 1 : 2
  decoded.entries.forEach((_, i) => {
    const list = blocks[1 + i * step]!
    const times = step === 2 ? blocks[2 + i * step]!.bytes : undefined
    const entries = decodeEntryList(list.bytes, { version: decoded.version, ...(times !== undefined ? { times } : {}) })
    for (const e of entries) checker.check(e)
    locate(entries, locations, distinct)
  })
  checker.end()
  return { locations, entries: decoded.count, size: decoded.size, blocks: distinct.size }
}

/** Adds where each content block of `entries` lives to `locations`, and its CID to `distinct`. */
export function locate (entries: readonly Entry[], locations: Located[], distinct: Set<string>): void {
  for (const e of entries) {
    if (e.type !== 'file' || e.chunks === undefined) continue
    let offset = 0
    for (const c of e.chunks) {
      const key = cidString(c.cid)
      distinct.add(key)
      locations.push({ cid: key, path: e.path, offset, length: c.length })
      offset += c.length
    }
  }
}
