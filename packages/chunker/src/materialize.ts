import { chmodSync, closeSync, constants, fchmodSync, fchownSync, lchownSync, linkSync, mkdirSync, openSync, readdirSync, readSync, rmSync, statSync, symlinkSync, writeSync } from 'node:fs'
import type { CID } from 'multiformats/cid'
import { lsetxattr, lutimens, mknod, S_IFBLK, S_IFCHR, S_IFIFO } from '@strata/sys'
import { sha256 } from './cid.ts'
import type { Entry, RootAttributes } from './entry.ts'
import { decodeEntryList, decodeRoot, EntryChecker } from './manifest.ts'
import { AbortError, BlockMismatchError, ChunkerError, InvalidManifestError, MaterializeError, PolicyError } from './errors.ts'

/** Where materialization takes its bytes from. Every block it yields is verified. */
export interface ContentSource {
  getBlock(cid: CID, opts?: { signal?: AbortSignal }): Promise<Uint8Array>
  /**
   * Optional fast path: a local file expected to hold exactly this entry's content.
   * Its bytes are still checked against every chunk CID as they are copied.
   */
  localFile?(entry: Entry): string | undefined
}

export interface MaterializeOptions {
  /**
   * The peer policy (on for layers from other machines): strip setuid/setgid bits,
   * keep only allow-listed xattrs, refuse device nodes other than whiteouts.
   */
  untrusted?: boolean
  /** xattr names kept under the peer policy. Default: `user.*`. */
  allowXattr?: (name: string) => boolean
  /** Apply entry owners. Default: when running as root. */
  preserveOwner?: boolean
  /** Which xattr marks an opaque directory: `trusted` (default as root) or `user` (for `userxattr` mounts). */
  opaqueNamespace?: 'trusted' | 'user'
  /** Content bytes fetched ahead of writing, at most. Default 64 MiB. */
  prefetchBytes?: number
  /** Blocks fetched at once. Default 32. */
  concurrency?: number
  signal?: AbortSignal
  onProgress?: (event: { entries: number, bytes: number, totalEntries: number, totalBytes: number }) => void
}

export interface MaterializeResult {
  entries: number
  bytes: number
}

const SUID_SGID = 0o6000
const defaultAllowXattr = (name: string): boolean => name.startsWith('user.') && !name.startsWith('user.overlay.')

interface DeferredDir {
  abs: string
  attrs: RootAttributes
}

/**
 * Writes the layer whose manifest root is `root` into `target` (absent or an empty
 * directory), in OverlayFS upper-dir form. Never follows a symlink, never writes
 * outside `target`; on any error the partial output is removed and a typed error
 * naming the entry is thrown.
 */
export async function materialize (root: CID, target: string, source: ContentSource, opts: MaterializeOptions = {}): Promise<MaterializeResult> {
  const created = ensureEmptyTarget(target)
  try {
    return await write(root, target, source, opts)
  } catch (err) {
    try {
      if (created) rmSync(target, { recursive: true, force: true })
      else for (const name of readdirSync(target)) rmSync(`${target}/${name}`, { recursive: true, force: true })
    } catch {
      // Cleanup is best effort; the original error is the one to report.
    }
    if (err instanceof ChunkerError) throw err
    const e = err as NodeJS.ErrnoException
    throw new MaterializeError(`cannot write the layer (${e.code ?? e.message})`, { path: e.path, cause: err })
  }
}

function ensureEmptyTarget (target: string): boolean {
  try {
    mkdirSync(target, { mode: 0o700 })
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new MaterializeError('cannot create the target directory', { path: target, cause: err })
  }
  if (!statSync(target).isDirectory() || readdirSync(target).length > 0) throw new MaterializeError('the target must be an empty directory', { path: target })
  return false
}

async function write (root: CID, target: string, source: ContentSource, opts: MaterializeOptions): Promise<MaterializeResult> {
  const untrusted = opts.untrusted === true
  const allowXattr = opts.allowXattr ?? defaultAllowXattr
  const preserveOwner = opts.preserveOwner ?? process.getuid?.() === 0
  const opaqueXattr = `${opts.opaqueNamespace ?? (process.getuid?.() === 0 ? 'trusted' : 'user')}.overlay.opaque`
  const prefetchBytes = opts.prefetchBytes ?? 64 * 1024 * 1024
  const concurrency = opts.concurrency ?? 32
  const signal = opts.signal
  const getBlock = (cid: CID): Promise<Uint8Array> => source.getBlock(cid, { signal })

  const manifest = decodeRoot(await getBlock(root))
  const checker = new EntryChecker(manifest.count)
  const dirs: DeferredDir[] = []
  let done = 0
  let bytes = 0

  const mode = (m: number): number => (untrusted ? m & ~SUID_SGID : m)
  const xattrsOf = (x: Array<[string, Uint8Array]> | undefined): Array<[string, Uint8Array]> =>
    x === undefined ? [] : untrusted ? x.filter(([n]) => allowXattr(n)) : x

  const finishNode = (abs: string, e: Entry): void => {
    if (preserveOwner) lchownSync(abs, e.uid, e.gid)
    for (const [n, v] of xattrsOf(e.xattrs)) lsetxattr(abs, n, v)
    lutimens(abs, e.mtime, e.mtime)
  }

  const writeFile = async (abs: string, e: Entry, blocks: Map<string, Uint8Array>): Promise<void> => {
    const fd = openSync(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
    try {
      if (e.data !== undefined) writeAll(fd, e.data)
      else if (e.chunks !== undefined) {
        const local = source.localFile?.(e)
        if (local !== undefined) copyVerified(local, fd, e)
        else {
          for (const c of e.chunks) {
            const key = c.cid.toString()
            const block = blocks.get(key) ?? await getBlock(c.cid)
            if (block.length !== c.length) throw new BlockMismatchError(`block ${key} is ${block.length} bytes, the manifest says ${c.length}`, { path: e.path })
            writeAll(fd, block)
          }
        }
      }
      if (preserveOwner) fchownSync(fd, e.uid, e.gid)
      fchmodSync(fd, mode(e.mode))
    } finally {
      closeSync(fd)
    }
    for (const [n, v] of xattrsOf(e.xattrs)) lsetxattr(abs, n, v)
    lutimens(abs, e.mtime, e.mtime)
  }

  const writeEntry = async (e: Entry, blocks: Map<string, Uint8Array>): Promise<void> => {
    const abs = `${target}/${e.path}`
    switch (e.type) {
      case 'dir': {
        mkdirSync(abs, { mode: 0o700 })
        const attrs: RootAttributes = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime }
        if (e.xattrs !== undefined) attrs.xattrs = e.xattrs
        if (e.opaque === true) attrs.opaque = true
        dirs.push({ abs, attrs })
        return
      }
      case 'file':
        await writeFile(abs, e, blocks)
        return
      case 'symlink':
        symlinkSync(e.target!, abs)
        finishNode(abs, e)
        return
      case 'hardlink':
        linkSync(`${target}/${e.target!}`, abs)
        return
      case 'whiteout':
        mknod(abs, S_IFCHR, 0, 0)
        finishNode(abs, e)
        return
      case 'fifo':
        mknod(abs, S_IFIFO | 0o600)
        chmodSync(abs, mode(e.mode))
        finishNode(abs, e)
        return
      case 'chardev':
      case 'blockdev':
        if (untrusted) throw new PolicyError('device nodes are refused in layers from peers', { path: e.path })
        mknod(abs, (e.type === 'chardev' ? S_IFCHR : S_IFBLK) | 0o600, e.rdev![0], e.rdev![1])
        chmodSync(abs, mode(e.mode))
        finishNode(abs, e)
    }
  }

  // Entries are written in order; the blocks of up to `prefetchBytes` of the files
  // ahead are fetched concurrently so that a slow source is not paid per block.
  for (const listCid of manifest.entries) {
    const list = decodeEntryList(await getBlock(listCid))
    if (list.length === 0) throw new InvalidManifestError('an entry-list block is empty')
    for (const e of list) checker.check(e)
    let i = 0
    while (i < list.length) {
      if (signal?.aborted === true) throw new AbortError({ cause: signal.reason })
      let j = i
      let batchBytes = 0
      const wanted: CID[] = []
      const seen = new Set<string>()
      while (j < list.length && (j === i || batchBytes < prefetchBytes)) {
        const e = list[j++]!
        if (e.type === 'file' && e.chunks !== undefined && source.localFile?.(e) === undefined) {
          for (const c of e.chunks) {
            const key = c.cid.toString()
            if (seen.has(key) || batchBytes >= prefetchBytes) continue
            seen.add(key)
            wanted.push(c.cid)
            batchBytes += c.length
          }
        }
      }
      const blocks = await fetchAll(wanted, getBlock, concurrency)
      for (; i < j; i++) {
        const e = list[i]!
        try {
          await writeEntry(e, blocks)
        } catch (err) {
          if (err instanceof ChunkerError) throw err
          const code = (err as NodeJS.ErrnoException).code ?? 'error'
          throw new MaterializeError(`cannot write ${e.type} (${code})`, { path: e.path, cause: err })
        }
        done++
        if (e.type === 'file') bytes += e.size
      }
      opts.onProgress?.({ entries: done, bytes, totalEntries: manifest.count, totalBytes: manifest.size })
    }
  }
  checker.end()

  // Directory attributes last, deepest first: writing into a directory changes its
  // mtime, and a read-only mode would stop the writes below it.
  dirs.push({ abs: target, attrs: manifest.root })
  for (let k = dirs.length - 1; k >= 0; k--) {
    const { abs, attrs } = dirs[k]!
    if (preserveOwner) lchownSync(abs, attrs.uid, attrs.gid)
    chmodSync(abs, mode(attrs.mode))
    for (const [n, v] of xattrsOf(attrs.xattrs)) lsetxattr(abs, n, v)
    if (attrs.opaque === true) lsetxattr(abs, opaqueXattr, Uint8Array.of(0x79))
    lutimens(abs, attrs.mtime, attrs.mtime)
  }
  return { entries: done, bytes }
}

function writeAll (fd: number, data: Uint8Array): void {
  let off = 0
  while (off < data.length) off += writeSync(fd, data, off, data.length - off)
}

let copyBuffer: Uint8Array | undefined

function copyVerified (from: string, fd: number, e: Entry): void {
  copyBuffer ??= new Uint8Array(1024 * 1024)
  const buf = copyBuffer
  const src = openSync(from, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    for (const c of e.chunks!) {
      let got = 0
      while (got < c.length) {
        const n = readSync(src, buf, got, c.length - got, null)
        if (n === 0) break
        got += n
      }
      const view = buf.subarray(0, got)
      if (got !== c.length || Buffer.compare(sha256(view), c.cid.multihash.digest) !== 0) {
        throw new BlockMismatchError(`local copy does not match block ${c.cid.toString()}`, { path: e.path })
      }
      writeAll(fd, view)
    }
  } finally {
    closeSync(src)
  }
}

async function fetchAll (cids: CID[], getBlock: (cid: CID) => Promise<Uint8Array>, concurrency: number): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>()
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < cids.length) {
      const cid = cids[next++]!
      out.set(cid.toString(), await getBlock(cid))
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, cids.length) }, worker))
  return out
}

