import { createHash } from 'node:crypto'
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync, realpathSync } from 'node:fs'
import { chmod, chown, lstat, mkdir, readdir, rename, rmdir, symlink, utimes, writeFile } from 'node:fs/promises'
import { setImmediate as nextTurn } from 'node:timers/promises'
import type { Logger } from 'pino'
import { statTreeAsync } from '@strata/sys'
import { ChainTooLongError, InputLimitError, WorkspaceError } from './errors.ts'
import { applyFilter, compileFilter } from './filter.ts'
import type { FilterEntry, FilterResult } from './filter.ts'
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
  /** A dir inside the checkout (relative) that is never walked, keyed or seen: the data dir, when the checkout holds it. */
  skip?: string
  /**
   * Relative paths never keyed nor seen: what the pipeline's `outputs` copy into the
   * checkout (keying them would make every run after the first miss; a step sees
   * what the steps below it built, not a stale copy).
   */
  exclude?: string[]
  /**
   * The walk of the checkout, made by the first scan of a run and reused by the steps
   * after it: steps write to their own upper dirs, never to the checkout, so one walk
   * per run is enough (resolveWorkspace makes a fresh spec for each run).
   */
  walked?: { at: number, maxBytes: number, tree: Promise<Buffer> }
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
   * What the digest covers, one record per entry the step sees, in walk order:
   * `path \0 type exec` (one byte each: `f d l o`, `0 1`), then for a file its 32-byte
   * content digest, for a symlink its link text and `\0`.
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
const READ_CHUNK = 1024 * 1024
/** Bytes hashed between two turns of the event loop (a file counts at least 4 KiB). */
const TURN_BYTES = 32 * 1024 * 1024
const S_IFMT = 0o170000
const S_IFREG = 0o100000
const S_IFDIR = 0o040000
const S_IFLNK = 0o120000

/** Parsed statTree output: one record per path, the root (empty path) first. */
interface Records {
  n: number
  start: Uint32Array
  /** Offset of the NUL after the path: the stat fields follow it. */
  meta: Uint32Array
  end: Uint32Array
  rel: string[]
  mode: Uint32Array
  size: Float64Array
  ctime: Float64Array
}

/** The walk's records; without `decode` the paths stay bytes (`rel` is empty), for a walk only compared against. */
function parseTree (tree: Buffer, decode = true): Records {
  // A path may hold a newline: counting them gives at least the number of records.
  let max = 0
  for (let i = tree.indexOf(10); i !== -1; i = tree.indexOf(10, i + 1)) max++
  const r: Records = { n: 0, start: new Uint32Array(max), meta: new Uint32Array(max), end: new Uint32Array(max), rel: new Array<string>(max), mode: new Uint32Array(max), size: new Float64Array(max), ctime: new Float64Array(max) }
  const len = tree.length
  let pos = 0
  let k = 0
  // One pass over the bytes: the fields after the path are decimal numbers, each ended by NUL, the last by a newline.
  while (pos < len) {
    let i = pos
    while (tree[i] !== 0) i++
    r.start[k] = pos
    r.meta[k] = i
    r.rel[k] = i === pos || !decode ? '' : tree.toString('utf8', pos, i)
    i++
    while (tree[i] !== 0) i++
    i++
    let mode = 0
    for (let c = tree[i]!; c !== 0; c = tree[++i]!) mode = mode * 10 + c - 48
    i++
    let ctime = 0
    for (let c = tree[i]!; c !== 0; c = tree[++i]!) ctime = ctime * 10 + c - 48
    i++
    let size = 0
    for (let c = tree[i]!; c !== 10; c = tree[++i]!) size = size * 10 + c - 48
    r.mode[k] = mode
    r.ctime[k] = ctime
    r.size[k] = size
    r.end[k] = i
    pos = i + 1
    k++
  }
  r.n = k
  return r
}

/** The walk, by the native statTree where the module has it, else in JS (same format). */
async function walk (dir: string, maxBytes: number, skip: string | undefined): Promise<Buffer> {
  if (statTreeAsync !== undefined) return await statTreeAsync(dir, maxBytes, skip)
  const skipBytes = skip === undefined ? undefined : Buffer.from(skip)
  const parts: Buffer[] = []
  let bytes = 0
  const put = (rel: Buffer, p: string): void => {
    const st = lstatSync(p, { bigint: true })
    const whiteout = (Number(st.mode) & S_IFMT) === 0o020000 && st.rdev === 0n
    const line = Buffer.concat([rel, Buffer.from(`\0${st.ino}\0${st.mode}\0${whiteout ? 0n : st.ctimeNs}\0${st.size}\n`)])
    bytes += line.length
    if (bytes > maxBytes) throw Object.assign(new Error('statTree: E2BIG'), { code: 'E2BIG' })
    parts.push(line)
    if ((Number(st.mode) & S_IFMT) !== S_IFDIR || (skipBytes !== undefined && rel.equals(skipBytes))) return
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
  const never = [...(ws.skip !== undefined ? [ws.skip] : []), ...(ws.exclude ?? [])]
  const sig = JSON.stringify([filter ?? null, never])
  const maxTreeBytes = Math.min(maxWalked * 512, 2 ** 31 - 1)
  if (ws.walked?.maxBytes !== maxTreeBytes) ws.walked = { at: Date.now() * 1e6, maxBytes: maxTreeBytes, tree: walk(ws.dir, maxTreeBytes, ws.skip) }
  const walkStart = ws.walked.at
  // Read while the walk runs on the thread pool.
  const file = statCachePath(opts.cacheDir, ws.dir, opts.digestKey.key)
  const cached = loadStatCache(file)
  let tree: Buffer
  try {
    tree = await ws.walked.tree
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'E2BIG') throw new InputLimitError(step, 'walked', maxWalked)
    throw new WorkspaceError(ws.dir, `cannot read it: ${(err as Error).message}`, { cause: err })
  }
  const cache = await cached
  opts.signal?.throwIfAborted()

  const known = cache !== undefined && !cache.racy && cache.tree.equals(tree) ? cache.results.get(sig) : undefined
  if (known !== undefined && cache !== undefined) {
    const { tree: t, digests } = cache
    return {
      path: ws.path,
      digest: new Uint8Array(Buffer.from(known.digest, 'hex')),
      files: known.files,
      hidden: known.hidden,
      unmatched: known.unmatched,
      listing: async () => {
        const r = parseTree(t)
        return buildListing(ws.dir, t, r, digests, applyFilter(entriesOf(r), compiled, never).visible)
      }
    }
  }

  const rec = parseTree(tree)
  if (rec.n - 1 > maxWalked) throw new InputLimitError(step, 'walked', maxWalked)
  const digests = Buffer.alloc(rec.n * 32)
  if (cache !== undefined) reuseDigests(tree, rec, cache, digests)
  const result = compiled === null ? unfiltered(rec, never) : applyFilter(entriesOf(rec), compiled, never)
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

  const listing = buildListing(ws.dir, tree, rec, digests, visible)
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

/** applyFilter without patterns, without building the entry tree: all but the top-level .git and `skip`. */
function unfiltered (rec: Records, never: readonly string[]): FilterResult {
  const visible = new Uint8Array(rec.n - 1).fill(1)
  const hidden: string[] = []
  for (const top of ['.git', ...never]) {
    for (let k = 1; k < rec.n; k++) {
      const rel = rec.rel[k]!
      if (rel === top || (rel.length > top.length && rel.startsWith(top) && rel[top.length] === '/')) {
        visible[k - 1] = 0
        if (rel === top) hidden.push(top)
      }
    }
  }
  return { visible, hidden, unmatched: [] }
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
  const old = parseTree(cache.tree, false)
  let byPath: Map<string, number> | undefined
  let j = 0
  for (let k = 1; k < rec.n; k++) {
    if ((rec.mode[k]! & S_IFMT) !== S_IFREG) continue
    // The walks are in the same order: most records are found by moving along the old one.
    while (j < old.n && (old.mode[j]! & S_IFMT) !== S_IFREG) j++
    let found: number
    if (j < old.n && sameBytes(cache.tree, old.start[j]!, old.meta[j]!, tree, rec.start[k]!, rec.meta[k]!)) {
      if (!sameBytes(cache.tree, old.meta[j]!, old.end[j]!, tree, rec.meta[k]!, rec.end[k]!)) {
        // The same file, changed: read again.
        j++
        continue
      }
      found = j
    } else {
      if (byPath === undefined) {
        byPath = new Map()
        for (let i = 1; i < old.n; i++) if ((old.mode[i]! & S_IFMT) === S_IFREG) byPath.set(cache.tree.toString('latin1', old.start[i]!, old.meta[i]!), i)
      }
      const i = byPath.get(tree.toString('latin1', rec.start[k]!, rec.meta[k]!))
      found = i !== undefined && sameBytes(cache.tree, old.meta[i]!, old.end[i]!, tree, rec.meta[k]!, rec.end[k]!) ? i : -1
    }
    if (found === -1) continue
    j = found + 1
    cache.digests.copy(digests, k * 32, found * 32, found * 32 + 32)
  }
}

function sameBytes (a: Buffer, aFrom: number, aTo: number, b: Buffer, bFrom: number, bTo: number): boolean {
  if (aTo - aFrom !== bTo - bFrom) return false
  for (let i = 0; i < aTo - aFrom; i++) if (a[aFrom + i] !== b[bFrom + i]) return false
  return true
}

function isZero (digests: Buffer, k: number): boolean {
  for (let i = k * 32; i < k * 32 + 32; i++) if (digests[i] !== 0) return false
  return true
}

/**
 * Reads and hashes the files `todo` names. Synchronous reads into one buffer: a
 * threadpool round trip per open, read and close costs more than the read itself
 * for the small files a checkout is mostly made of. The event loop gets a turn
 * every few MiB so that a signal can stop a long scan.
 */
async function hashFiles (dir: string, rec: Records, todo: readonly number[], digests: Buffer, opts: ScanOptions): Promise<void> {
  const buf = Buffer.allocUnsafe(READ_CHUNK)
  let sinceTurn = 0
  for (const k of todo) {
    if (sinceTurn > TURN_BYTES) {
      sinceTurn = 0
      await nextTurn()
      opts.signal?.throwIfAborted()
    }
    const h = inputDigest(opts.digestKey)
    let fd: number | undefined
    try {
      fd = openSync(`${dir}/${rec.rel[k]!}`, 'r')
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, null)
        if (n === 0) break
        h.update(buf.subarray(0, n))
        sinceTurn += n
      }
    } catch (err) {
      throw new WorkspaceError(dir, `cannot read ${rec.rel[k]!}: ${(err as Error).message}`, { cause: err })
    } finally {
      if (fd !== undefined) closeSync(fd)
    }
    h.digest().copy(digests, k * 32)
    sinceTurn += 4096
  }
}

function buildListing (dir: string, tree: Buffer, rec: Records, digests: Buffer, visible: Uint8Array): Buffer {
  const links = new Map<number, Buffer>()
  let size = 0
  for (let k = 1; k < rec.n; k++) {
    if (visible[k - 1] !== 1) continue
    const type = rec.mode[k]! & S_IFMT
    size += rec.meta[k]! - rec.start[k]! + 3
    if (type === S_IFREG) size += 32
    else if (type === S_IFLNK) {
      const target = Buffer.from(readlinkSafe(`${dir}/${rec.rel[k]!}`))
      links.set(k, target)
      size += target.length + 1
    }
  }
  // One buffer, the paths copied from the walk's bytes: no string per entry.
  const out = Buffer.allocUnsafe(size)
  let at = 0
  for (let k = 1; k < rec.n; k++) {
    if (visible[k - 1] !== 1) continue
    const mode = rec.mode[k]!
    const type = mode & S_IFMT
    at += tree.copy(out, at, rec.start[k]!, rec.meta[k]!)
    out[at++] = 0
    out[at++] = type === S_IFREG ? 0x66 : type === S_IFDIR ? 0x64 : type === S_IFLNK ? 0x6c : 0x6f
    out[at++] = type === S_IFREG && (mode & 0o111) !== 0 ? 0x31 : 0x30
    if (type === S_IFREG) at += digests.copy(out, at, k * 32, k * 32 + 32)
    else if (type === S_IFLNK) {
      at += links.get(k)!.copy(out, at)
      out[at++] = 0
    }
  }
  return out
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
  let at = 0
  while (at < listing.length) {
    const z = listing.indexOf(0, at)
    if (z === -1 || z + 2 >= listing.length) break
    const path = listing.toString('utf8', at, z)
    const type = String.fromCharCode(listing[z + 1]!)
    const exec = String.fromCharCode(listing[z + 2]!)
    at = z + 3
    let payload = ''
    if (type === 'f') {
      payload = listing.toString('hex', at, at + 32)
      at += 32
    } else if (type === 'l') {
      const end = listing.indexOf(0, at)
      payload = listing.toString('utf8', at, end === -1 ? listing.length : end)
      at = end === -1 ? listing.length : end + 1
    }
    out.set(path, { type, exec, payload })
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
 * first; `host`, the checkout), `ws-hide` (the whiteouts to make, NUL separated),
 * `wu/` and `ww/` (upper and work dir), `wh/` (the whiteouts' tmpfs), `wb/` (where
 * the whiteouts over the checkout are mounted, the lowest lower dir).
 * Returns the lowerdir option, relative to `wl/`.
 */
export async function prepareWorkspace (runDir: string, ws: WorkspaceSpec, layers: readonly string[], hidden: readonly string[]): Promise<string> {
  for (const d of ['wl', 'wu', 'ww', 'wh', 'wb']) await mkdir(`${runDir}/${d}`, { recursive: true, mode: 0o755 })
  const names: string[] = []
  for (const layer of uniqueLayers(layers)) {
    const st = await lstat(`${layer}${ws.path}`).catch(() => undefined)
    if (st === undefined || !st.isDirectory()) continue
    const n = names.length.toString(36)
    await symlink(`${layer}${ws.path}`, `${runDir}/wl/${n}`)
    names.push(n)
  }
  // The checkout (under its whiteouts) takes one of OverlayFS's 500 lower dirs.
  if (names.length > MAX_LOWER_LAYERS) throw new ChainTooLongError(names.length, MAX_LOWER_LAYERS)
  await symlink(ws.dir, `${runDir}/wl/host`)
  // The merged root shows the upper dir's owner and mode: the checkout's.
  const root = await lstat(ws.dir)
  await chmod(`${runDir}/wu`, root.mode & 0o7777)
  await chown(`${runDir}/wu`, root.uid, root.gid)
  await writeFile(`${runDir}/ws-hide`, hidden.map((h) => `${h}\0`).join(''), { mode: 0o600 })
  return [...names, '../wb'].join(':')
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

/** The workspace with its host dir resolved (the data dir is compared by real path), checked, and the data dir to skip when it holds it. */
export function resolveWorkspace (ws: WorkspaceSpec, dataDir: string): WorkspaceSpec {
  let dir = ws.dir
  try {
    dir = realpathSync(ws.dir)
  } catch {
    // checkWorkspace says what is wrong with it
  }
  const resolved: WorkspaceSpec = { dir, path: ws.path }
  if (ws.exclude !== undefined) resolved.exclude = ws.exclude
  const skip = checkWorkspace(resolved, dataDir)
  if (skip !== undefined) resolved.skip = skip
  return resolved
}

/**
 * A workspace dir must exist, be a directory, and not be the data dir nor lie inside
 * it. It may hold the data dir: then that is returned, relative, to be left out of
 * the walk, the key and the view.
 */
export function checkWorkspace (ws: WorkspaceSpec, dataDir: string): string | undefined {
  let st
  try {
    st = lstatSync(ws.dir)
  } catch (err) {
    throw new WorkspaceError(ws.dir, 'does not exist', { cause: err })
  }
  if (!st.isDirectory()) throw new WorkspaceError(ws.dir, 'is not a directory')
  const d = ws.dir.replace(/\/+$/, '')
  if (d === '') throw new WorkspaceError(ws.dir, 'is the whole host filesystem')
  if (dataDir === d || d.startsWith(`${dataDir}/`)) throw new WorkspaceError(ws.dir, `is the data dir ${dataDir} or lies inside it`)
  return dataDir.startsWith(`${d}/`) ? dataDir.slice(d.length + 1) : undefined
}
