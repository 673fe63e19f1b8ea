import { createHash } from 'node:crypto'
import { createReadStream, lstatSync, readFile as readFileCb, readdirSync, readlinkSync } from 'node:fs'
import { chmod, chown, lstat, mkdir, readdir, rename, rmdir, symlink, utimes, writeFile } from 'node:fs/promises'
import type { Logger } from 'pino'
import { statTreeAsync } from '@strata/sys'
import { ChainTooLongError, InputLimitError, WorkspaceError } from './errors.ts'
import { applyFilter, compileFilter } from './filter.ts'
import type { FilterEntry } from './filter.ts'
import { inputDigest } from './key.ts'
import type { DigestKey } from './key.ts'
import type { InputLimits } from './inputs.ts'
import { MAX_LOWER_LAYERS, uniqueLayers } from './sandbox.ts'
import { loadStatCache, saveStatCache, statCachePath } from './stat-cache.ts'
import type { StatCache } from './stat-cache.ts'
import { LayeredView } from './view.ts'

/** The checkout every step sees: the host dir `dir` at `path` in the step's view. */
export interface WorkspaceSpec {
  /** Absolute host path. */
  dir: string
  /** Absolute path inside the step's view. */
  path: string
}

/** What a step's workspace adds to its key and to its mount. */
export interface WorkspaceScan {
  /** Where the step sees it. */
  path: string
  /** sha2-256 of the listing (see listing()). */
  digest: Uint8Array
  /** Entries the step sees. */
  files: number
  /** Top-most checkout entries the step does not see (relative paths): one whiteout each. */
  hidden: string[]
  /** Filter patterns that matched nothing. */
  unmatched: string[]
  /**
   * What the digest covers, one line per entry the step sees, in walk order:
   * `path \0 type (f d l o) \0 exec (0 1) \0 content digest in hex | link text \n`.
   */
  listing: () => Promise<Buffer>
}

export interface ScanOptions {
  /** Where stat caches live (in the data dir). */
  cacheDir: string
  digestKey: DigestKey
  limits?: InputLimits
  signal?: AbortSignal
  log?: Logger
}

const DEFAULT_MAX_FILES = 100_000
const DEFAULT_MAX_BYTES = 8 * 1024 ** 3
/** A file changed this close to the walk may change again within the same ctime tick: its digest is not kept. */
const RACY_NS = 1e9
const HASH_CONCURRENCY = 8
/** Files up to this size are read in one call; larger ones are streamed. */
const WHOLE_READ = 8 * 1024 * 1024
const S_IFMT = 0o170000
const S_IFREG = 0o100000
const S_IFDIR = 0o040000
const S_IFLNK = 0o120000

/** Parsed statTree output: one record per path, the root (empty path) first. */
interface Records {
  n: number
  start: Uint32Array
  end: Uint32Array
  rel: string[]
  mode: Uint32Array
  size: Float64Array
  ctime: Float64Array
}

function parseTree (tree: Buffer): Records {
  let n = 0
  for (let i = tree.indexOf(10); i !== -1; i = tree.indexOf(10, i + 1)) n++
  const r: Records = { n, start: new Uint32Array(n), end: new Uint32Array(n), rel: new Array<string>(n), mode: new Uint32Array(n), size: new Float64Array(n), ctime: new Float64Array(n) }
  let pos = 0
  for (let k = 0; k < n; k++) {
    const z1 = tree.indexOf(0, pos)
    const z2 = tree.indexOf(0, z1 + 1)
    const z3 = tree.indexOf(0, z2 + 1)
    const z4 = tree.indexOf(0, z3 + 1)
    const nl = tree.indexOf(10, z4 + 1)
    r.start[k] = pos
    r.end[k] = nl
    r.rel[k] = tree.toString('utf8', pos, z1)
    r.mode[k] = digits(tree, z2 + 1, z3)
    r.ctime[k] = digits(tree, z3 + 1, z4)
    r.size[k] = digits(tree, z4 + 1, nl)
    pos = nl + 1
  }
  return r
}

function digits (b: Buffer, from: number, to: number): number {
  let v = 0
  let neg = false
  for (let i = from; i < to; i++) {
    const c = b[i]!
    if (c === 45) neg = true
    else v = v * 10 + (c - 48)
  }
  return neg ? -v : v
}

/** The walk, by the native statTree where the module has it, else in JS (same format). */
async function walk (dir: string, maxBytes: number): Promise<Buffer> {
  if (statTreeAsync !== undefined) return await statTreeAsync(dir, maxBytes)
  const parts: Buffer[] = []
  let bytes = 0
  const put = (rel: Buffer, p: string): void => {
    const st = lstatSync(p, { bigint: true })
    const whiteout = (Number(st.mode) & S_IFMT) === 0o020000 && st.rdev === 0n
    const line = Buffer.concat([rel, Buffer.from(`\0${st.ino}\0${st.mode}\0${whiteout ? 0n : st.ctimeNs}\0${st.size}\n`)])
    bytes += line.length
    if (bytes > maxBytes) throw Object.assign(new Error('statTree: E2BIG'), { code: 'E2BIG' })
    parts.push(line)
    if ((Number(st.mode) & S_IFMT) !== S_IFDIR) return
    const names = readdirSync(p, { encoding: 'buffer' }).sort(Buffer.compare)
    for (const name of names) put(rel.length === 0 ? name : Buffer.concat([rel, Buffer.from('/'), name]), `${p}/${name.toString()}`)
  }
  put(Buffer.alloc(0), dir)
  return Buffer.concat(parts)
}

/**
 * The step's workspace as it enters the key: one stat walk of the checkout, the
 * filter, and a content digest for each file the step sees, read only when its
 * stat record changed since the last scan (the stat cache).
 */
export async function scanWorkspace (step: string, ws: WorkspaceSpec, filter: readonly string[] | undefined, opts: ScanOptions): Promise<WorkspaceScan> {
  const maxFiles = opts.limits?.maxFiles ?? DEFAULT_MAX_FILES
  const maxBytes = opts.limits?.maxBytes ?? DEFAULT_MAX_BYTES
  const maxWalked = maxFiles * 10
  const compiled = filter === undefined ? null : compileFilter(filter)
  const sig = JSON.stringify(filter ?? null)
  const walkStart = Date.now() * 1e6
  let tree: Buffer
  try {
    tree = await walk(ws.dir, Math.min(maxWalked * 512, 2 ** 31 - 1))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'E2BIG') throw new InputLimitError(step, 'walked', maxWalked)
    throw new WorkspaceError(ws.dir, `cannot read it: ${(err as Error).message}`, { cause: err })
  }
  opts.signal?.throwIfAborted()
  const file = statCachePath(opts.cacheDir, ws.dir, opts.digestKey.key)
  const cache = await loadStatCache(file)

  const known = cache !== undefined && !cache.racy && cache.tree.equals(tree) ? cache.results.get(sig) : undefined
  if (known !== undefined && cache !== undefined) {
    const { tree: t, digests } = cache
    return {
      path: ws.path,
      digest: new Uint8Array(Buffer.from(known.digest, 'hex')),
      files: known.files,
      hidden: known.hidden,
      unmatched: known.unmatched,
      listing: async () => buildListing(ws.dir, parseTree(t), digests, applyFilter(entriesOf(parseTree(t)), compiled).visible)
    }
  }

  const rec = parseTree(tree)
  if (rec.n - 1 > maxWalked) throw new InputLimitError(step, 'walked', maxWalked)
  const digests = Buffer.alloc(rec.n * 32)
  if (cache !== undefined) reuseDigests(tree, rec, cache, digests)
  const entries = entriesOf(rec)
  const result = applyFilter(entries, compiled)
  const visible = result.visible

  const todo: number[] = []
  let files = 0
  let bytes = 0
  for (let k = 1; k < rec.n; k++) {
    if (visible[k - 1] !== 1) continue
    if (++files > maxFiles) throw new InputLimitError(step, 'files', maxFiles)
    if ((rec.mode[k]! & S_IFMT) !== S_IFREG) continue
    bytes += rec.size[k]!
    if (bytes > maxBytes) throw new InputLimitError(step, 'bytes', maxBytes)
    if (isZero(digests, k)) todo.push(k)
  }
  await hashFiles(ws.dir, rec, todo, digests, opts)

  const listing = buildListing(ws.dir, rec, digests, visible)
  const digest = listingDigest(listing)

  // Keep what can be trusted next time: nothing changed within the racy window.
  let racy = false
  for (let k = 1; k < rec.n; k++) {
    if (rec.ctime[k]! >= walkStart - RACY_NS && !isZero(digests, k)) {
      digests.fill(0, k * 32, k * 32 + 32)
      racy = true
    }
  }
  const next: StatCache = { tree, digests, racy, results: new Map() }
  if (!racy) {
    if (cache !== undefined && cache.tree.equals(tree) && !cache.racy) for (const [k, v] of cache.results) next.results.set(k, v)
    next.results.delete(sig)
    next.results.set(sig, { digest: Buffer.from(digest).toString('hex'), files, hidden: result.hidden, unmatched: result.unmatched })
  }
  try {
    await saveStatCache(file, next)
  } catch (err) {
    // Only the next scan's speed depends on it.
    opts.log?.info({ err, file }, 'cannot write the workspace stat cache')
  }
  return { path: ws.path, digest, files, hidden: result.hidden, unmatched: result.unmatched, listing: async () => listing }
}

function entriesOf (rec: Records): FilterEntry[] {
  const out: FilterEntry[] = new Array<FilterEntry>(rec.n - 1)
  // Depth first: the parent of an entry is on the stack of open directories.
  const stack: Array<{ rel: string, index: number }> = []
  for (let k = 1; k < rec.n; k++) {
    const rel = rec.rel[k]!
    const slash = rel.lastIndexOf('/')
    const parentRel = slash === -1 ? '' : rel.slice(0, slash)
    while (stack.length > 0 && stack[stack.length - 1]!.rel !== parentRel) stack.pop()
    const dir = (rec.mode[k]! & S_IFMT) === S_IFDIR
    out[k - 1] = { rel, parent: stack.length > 0 ? stack[stack.length - 1]!.index : -1, dir }
    if (dir) stack.push({ rel, index: k - 1 })
  }
  return out
}

/** Copies the digest of every record identical to last time's (same path, inode, mode, ctime, size). */
function reuseDigests (tree: Buffer, rec: Records, cache: StatCache, digests: Buffer): void {
  const old = parseTree(cache.tree)
  let byRecord: Map<string, number> | undefined
  let j = 0
  for (let k = 1; k < rec.n; k++) {
    if ((rec.mode[k]! & S_IFMT) !== S_IFREG) continue
    // The walks are in the same order: most records are found by moving along the old one.
    while (j < old.n && (old.mode[j]! & S_IFMT) !== S_IFREG) j++
    let found: number
    if (j < old.n && tree.compare(cache.tree, old.start[j]!, old.end[j]!, rec.start[k]!, rec.end[k]!) === 0) found = j
    else {
      if (byRecord === undefined) {
        byRecord = new Map()
        for (let i = 1; i < old.n; i++) if ((old.mode[i]! & S_IFMT) === S_IFREG) byRecord.set(cache.tree.toString('latin1', old.start[i]!, old.end[i]!), i)
      }
      found = byRecord.get(tree.toString('latin1', rec.start[k]!, rec.end[k]!)) ?? -1
    }
    if (found === -1) continue
    j = found + 1
    cache.digests.copy(digests, k * 32, found * 32, found * 32 + 32)
  }
}

function isZero (digests: Buffer, k: number): boolean {
  for (let i = k * 32; i < k * 32 + 32; i++) if (digests[i] !== 0) return false
  return true
}

async function hashFiles (dir: string, rec: Records, todo: readonly number[], digests: Buffer, opts: ScanOptions): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < todo.length) {
      opts.signal?.throwIfAborted()
      const k = todo[next++]!
      const path = `${dir}/${rec.rel[k]!}`
      const h = inputDigest(opts.digestKey)
      try {
        if (rec.size[k]! <= WHOLE_READ) {
          h.update(await new Promise<Buffer>((resolve, reject) => readFileCb(path, (err, data) => err === null ? resolve(data) : reject(err))))
        } else {
          for await (const chunk of createReadStream(path, { signal: opts.signal, highWaterMark: 1 << 20 })) h.update(chunk as Buffer)
        }
      } catch (err) {
        throw new WorkspaceError(dir, `cannot read ${rec.rel[k]!}: ${(err as Error).message}`, { cause: err })
      }
      h.digest().copy(digests, k * 32)
    }
  }
  await Promise.all(Array.from({ length: Math.min(HASH_CONCURRENCY, todo.length) }, worker))
}

function buildListing (dir: string, rec: Records, digests: Buffer, visible: Uint8Array): Buffer {
  const lines: string[] = []
  for (let k = 1; k < rec.n; k++) {
    if (visible[k - 1] !== 1) continue
    const mode = rec.mode[k]!
    const type = mode & S_IFMT
    const rel = rec.rel[k]!
    if (type === S_IFREG) lines.push(`${rel}\0f\0${(mode & 0o111) !== 0 ? 1 : 0}\0${digests.toString('hex', k * 32, k * 32 + 32)}\n`)
    else if (type === S_IFDIR) lines.push(`${rel}\0d\x000\0\n`)
    else if (type === S_IFLNK) lines.push(`${rel}\0l\x000\0${readlinkSafe(`${dir}/${rel}`)}\n`)
    else lines.push(`${rel}\0o\x000\0\n`)
  }
  return Buffer.from(lines.join(''))
}

function readlinkSafe (p: string): string {
  try {
    return readlinkSync(p)
  } catch {
    return ''
  }
}

export function listingDigest (listing: Buffer): Uint8Array {
  return new Uint8Array(createHash('sha256').update('strata/workspace/v1\0').update(listing).digest())
}

/** One entry of a listing. */
export interface ListedEntry {
  type: string
  exec: string
  payload: string
}

export function parseListing (listing: Buffer): Map<string, ListedEntry> {
  const out = new Map<string, ListedEntry>()
  for (const line of listing.toString('utf8').split('\n')) {
    if (line === '') continue
    const [path, type, exec, ...rest] = line.split('\0')
    out.set(path!, { type: type!, exec: exec!, payload: rest.join('\0') })
  }
  return out
}

/** Per workspace path, what changed between two listings (for why). */
export function diffListings (before: Buffer, after: Buffer): Array<{ path: string, change: 'added' | 'removed' | 'content' | 'type' | 'mode' | 'target' }> {
  const b = parseListing(before)
  const a = parseListing(after)
  const out: Array<{ path: string, change: 'added' | 'removed' | 'content' | 'type' | 'mode' | 'target' }> = []
  for (const [path, x] of b) {
    const y = a.get(path)
    if (y === undefined) out.push({ path, change: 'removed' })
    else if (x.type !== y.type) out.push({ path, change: 'type' })
    else if (x.payload !== y.payload) out.push({ path, change: x.type === 'l' ? 'target' : 'content' })
    else if (x.exec !== y.exec) out.push({ path, change: 'mode' })
  }
  for (const path of a.keys()) if (!b.has(path)) out.push({ path, change: 'added' })
  return out
}

/**
 * Lays out in `runDir` what the helper mounts at the workspace path: `wl/` links to
 * the lower dirs (the workspace subdir of each layer below that has one, newest
 * first, then `host`, the checkout), `ws-hide` (the whiteouts to make, NUL
 * separated), `wu/` and `ww/` (upper and work dir), `wh/` (the whiteouts' tmpfs).
 * Returns the lowerdir option, relative to `wl/`.
 */
export async function prepareWorkspace (runDir: string, ws: WorkspaceSpec, layers: readonly string[], hidden: readonly string[]): Promise<string> {
  for (const d of ['wl', 'wu', 'ww', 'wh']) await mkdir(`${runDir}/${d}`, { recursive: true, mode: 0o755 })
  const names: string[] = []
  for (const layer of uniqueLayers(layers)) {
    const st = await lstat(`${layer}${ws.path}`).catch(() => undefined)
    if (st === undefined || !st.isDirectory()) continue
    const n = names.length.toString(36)
    await symlink(`${layer}${ws.path}`, `${runDir}/wl/${n}`)
    names.push(n)
  }
  // The hider and the checkout take two of OverlayFS's 500 lower dirs.
  if (names.length > MAX_LOWER_LAYERS - 1) throw new ChainTooLongError(names.length, MAX_LOWER_LAYERS - 1)
  await symlink(ws.dir, `${runDir}/wl/host`)
  // The merged root shows the upper dir's owner and mode: the checkout's.
  const root = await lstat(ws.dir)
  await chmod(`${runDir}/wu`, root.mode & 0o7777)
  await chown(`${runDir}/wu`, root.uid, root.gid)
  await writeFile(`${runDir}/ws-hide`, hidden.map((h) => `${h}\0`).join(''), { mode: 0o600 })
  return [...names, '../wh', 'host'].join(':')
}

/**
 * After a successful run: what the step changed in the workspace (`wu/`) becomes
 * `<workspace path>` in its layer's upper dir, in place of the empty mount point.
 * Whiteouts and opaque dirs keep their meaning: in a later step's workspace
 * overlay they hide what is below them there, and in the root overlay the
 * workspace mount covers that path anyway.
 */
export async function absorbWorkspace (runDir: string, wsPath: string, lowers: readonly string[], base: string): Promise<void> {
  const target = `${runDir}/u${wsPath}`
  const wu = `${runDir}/wu`
  // The mount point the helper made in the root upper dir holds nothing.
  await rmdir(target).catch(() => {})
  if ((await readdir(wu)).length === 0) return
  // Parents of the workspace path missing from the upper dir get the view's owner and mode.
  const parts = wsPath.split('/').filter((c) => c !== '')
  const view = new LayeredView(lowers, base)
  let at = ''
  for (const c of parts.slice(0, -1)) {
    at += `/${c}`
    const st = await lstat(`${runDir}/u${at}`).catch(() => undefined)
    if (st !== undefined) continue
    const seen = view.lstat(at)
    await mkdir(`${runDir}/u${at}`, { mode: 0o755 })
    if (seen !== undefined) {
      await chmod(`${runDir}/u${at}`, seen.stats.mode & 0o7777)
      await chown(`${runDir}/u${at}`, seen.stats.uid, seen.stats.gid)
      await utimes(`${runDir}/u${at}`, seen.stats.atime, seen.stats.mtime)
    }
  }
  await rename(wu, target)
  // Its time moves with every top-level change: identical changes must make identical layers.
  await utimes(target, 0, 0)
}

/** A workspace dir must exist, be a directory, and not hold the data dir nor lie inside it (OverlayFS refuses nested lower dirs). */
export function checkWorkspace (ws: WorkspaceSpec, dataDir: string): void {
  let st
  try {
    st = lstatSync(ws.dir)
  } catch (err) {
    throw new WorkspaceError(ws.dir, 'does not exist', { cause: err })
  }
  if (!st.isDirectory()) throw new WorkspaceError(ws.dir, 'is not a directory')
  const d = ws.dir.replace(/\/+$/, '')
  if (d === '' || dataDir === d || dataDir.startsWith(`${d}/`) || d.startsWith(`${dataDir}/`)) {
    throw new WorkspaceError(ws.dir, `holds the data dir ${dataDir} or lies inside it: move one of them (OverlayFS refuses a lower dir inside another)`)
  }
}
