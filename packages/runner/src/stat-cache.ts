import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'

/**
 * What the last scan of one checkout learned, kept in the data dir like git's
 * index: the checkout's stat walk (`statTree` lines: path, inode, mode, ctime,
 * size) and, aligned with its records, the content digest of each regular file
 * (zeros where unknown: not a file, or changed too recently to trust its stat).
 * A file whose record is byte for byte the same as last time is not read again.
 * The results per filter are kept too: when the whole walk is unchanged a step's
 * workspace costs one walk and one comparison.
 */
export interface StatCache {
  /** The walk, as statTree returned it. */
  tree: Buffer
  /** 32 bytes per record of `tree`, in order. */
  digests: Buffer
  /** Some record's digest was left out (changed within the racy window): the whole-walk shortcut does not apply. */
  racy: boolean
  /** Per filter signature: the scan's outcome. */
  results: Map<string, CachedResult>
}

export interface CachedResult {
  /** Hex of the workspace digest. */
  digest: string
  files: number
  hidden: string[]
  unmatched: string[]
}

const CACHE_FORMAT = 1
/** Filter signatures remembered per checkout: one per step, a pipeline has few distinct filters. */
const MAX_RESULTS = 64

/** The cache file of one checkout under one digest key (digests made under another key are of no use). */
export function statCachePath (cacheDir: string, hostDir: string, digestKey: Uint8Array): string {
  const id = createHash('sha256').update('strata/ws-cache/v1\0').update(hostDir).update('\0').update(digestKey).digest('hex').slice(0, 40)
  return `${cacheDir}/${id}`
}

/** The cache, or undefined when there is none or it cannot be used (another format, truncated). */
export async function loadStatCache (file: string): Promise<StatCache | undefined> {
  let buf: Buffer
  try {
    buf = await readFile(file)
  } catch {
    return undefined
  }
  try {
    if (buf.length < 4) return undefined
    const hlen = buf.readUInt32BE(0)
    const head = JSON.parse(buf.toString('utf8', 4, 4 + hlen)) as { v: number, tree: number, n: number, racy: boolean, results: Array<[string, CachedResult]> }
    if (head.v !== CACHE_FORMAT) return undefined
    const treeAt = 4 + hlen
    const digestsAt = treeAt + head.tree
    if (buf.length !== digestsAt + head.n * 32) return undefined
    return {
      tree: buf.subarray(treeAt, digestsAt),
      digests: buf.subarray(digestsAt),
      racy: head.racy,
      results: new Map(head.results)
    }
  } catch {
    return undefined
  }
}

/** Writes the cache (a temporary file renamed into place: a reader never sees half of it). */
export async function saveStatCache (file: string, cache: StatCache): Promise<void> {
  const results = [...cache.results].slice(-MAX_RESULTS)
  const head = Buffer.from(JSON.stringify({ v: CACHE_FORMAT, tree: cache.tree.length, n: cache.digests.length / 32, racy: cache.racy, results }))
  const len = Buffer.alloc(4)
  len.writeUInt32BE(head.length)
  await mkdir(file.slice(0, file.lastIndexOf('/')), { recursive: true })
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
  try {
    await writeFile(tmp, Buffer.concat([len, head, cache.tree, cache.digests]), { mode: 0o600 })
    await rename(tmp, file)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}
