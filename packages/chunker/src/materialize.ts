import { chmodSync, closeSync, constants, fchmodSync, fchownSync, lchownSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, symlinkSync, writeSync } from 'node:fs'
import type { CID } from 'multiformats/cid'
import { FileBatch, lsetxattr, lutimens, mknod, S_IFBLK, S_IFCHR, S_IFIFO } from '@strata/sys'
import { FsPool } from './fs-pool.ts'
import type { PoolRequest, WriteItem, WriteOptions } from './fs-pool.ts'
import { Lookahead } from './lookahead.ts'
import type { Entry, RootAttributes } from './entry.ts'
import { decodeEntryList, decodeRoot, EntryChecker } from './manifest.ts'
import { verifyBlock } from './cid.ts'
import { removeTree } from './remove.ts'
import { defaultOpaqueNamespace, isCarriedXattr } from './xattrs.ts'
import { AbortError, BlockMismatchError, ChunkerError, InvalidManifestError, MaterializeError, PolicyError } from './errors.ts'

/** Where materialization takes its bytes from. Every block it yields is verified. */
export interface ContentSource {
  getBlock(cid: CID, opts?: { signal?: AbortSignal }): Promise<Uint8Array>
  /**
   * Optional fast path: a local file expected to hold exactly this entry's content.
   * Its bytes are still checked against every chunk CID as they are copied.
   */
  localFile?(entry: Entry): string | undefined
  /**
   * True when getBlock() already checks each block against its CID (an in-process
   * source that verifies before anything else sees the bytes): materialize then
   * does not hash them again. Every other source is verified here.
   */
  readonly verified?: boolean
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
  /**
   * Bytes a materialization holds at once, from the moment a block is asked for until
   * the worker that writes it is done: file blocks, and the entry-list blocks their
   * windows come from. A window (or file) larger than the whole budget still goes
   * through, alone. Default 32 MiB.
   */
  prefetchBytes?: number
  /** Windows of entries (a window is at most an entry list) read ahead of the writes. Default 8. */
  windowsAhead?: number
  /** Blocks fetched at once. Default 32. */
  concurrency?: number
  /** Worker threads to write with; by default a pool made and closed for this call. */
  pool?: FsPool
  signal?: AbortSignal
  onProgress?: (event: { entries: number, bytes: number, totalEntries: number, totalBytes: number }) => void
  /** Called with each entry list, in manifest order, once it is decoded and its entries checked. */
  onEntryList?: (entries: readonly Entry[]) => void
}

export interface MaterializeResult {
  entries: number
  bytes: number
}

const SUID_SGID = 0o6000

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
      if (created) removeTree(target)
      else for (const name of readdirSync(target)) removeTree(`${target}/${name}`)
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

// Files written by one worker request, and requests outstanding at once. A request's
// bytes are part of the budget until it is done, so a request takes a share of it.
const WRITE_BATCH_FILES = 256
const WRITE_BATCH_SHARE = 8
const MAX_WRITES_IN_FLIGHT = 4
/** Entry-list blocks asked for ahead of the one being read. */
const LISTS_AHEAD = 4
/** Files larger than this, from a remote source, are streamed rather than prefetched whole. */
const STREAM_BYTES = 8 * 1024 * 1024

async function write (root: CID, target: string, source: ContentSource, opts: MaterializeOptions): Promise<MaterializeResult> {
  const untrusted = opts.untrusted === true
  const allowXattr = opts.allowXattr ?? isCarriedXattr
  const euid = process.geteuid?.() ?? 0
  const preserveOwner = opts.preserveOwner ?? euid === 0
  const opaqueXattr = `${opts.opaqueNamespace ?? defaultOpaqueNamespace()}.overlay.opaque`
  const prefetchBytes = opts.prefetchBytes ?? 32 * 1024 * 1024
  const windowsAhead = Math.max(1, opts.windowsAhead ?? 8)
  const concurrency = opts.concurrency ?? 32
  const signal = opts.signal
  // Every block is checked here unless the source checks it itself.
  const getBlock = source.verified === true
    ? async (cid: CID): Promise<Uint8Array> => await source.getBlock(cid, { signal })
    : async (cid: CID): Promise<Uint8Array> => {
      const bytes = await source.getBlock(cid, { signal })
      verifyBlock(cid, bytes)
      return bytes
    }
  const writeOptions: WriteOptions = { preserveOwner, umask: currentUmask(), euid, egid: process.getegid?.() ?? 0 }

  const manifest = decodeRoot(await getBlock(root))
  const checker = new EntryChecker(manifest.count, manifest.size)
  const dirs: DeferredDir[] = []
  const hardlinks: Entry[] = []
  let done = 0
  let bytes = 0

  const mode = (m: number): number => (untrusted ? m & ~SUID_SGID : m)
  const xattrsOf = (x: Array<[string, Uint8Array]> | undefined): Array<[string, Uint8Array]> | undefined => {
    if (x === undefined) return undefined
    const kept = untrusted ? x.filter(([n]) => allowXattr(n)) : x
    return kept.length > 0 ? kept : undefined
  }
  const finishNode = (abs: string, e: Entry): void => {
    if (preserveOwner) lchownSync(abs, e.uid, e.gid)
    for (const [n, v] of xattrsOf(e.xattrs) ?? []) lsetxattr(abs, n, v)
    lutimens(abs, e.mtime, e.mtime)
  }

  // A large file from a remote source is written from the main thread a window
  // of blocks at a time, so that memory stays bounded whatever the file's size.
  const writeStreamed = async (abs: string, e: Entry): Promise<void> => {
    const fd = openSync(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
    try {
      const chunks = e.chunks!
      for (let k = 0; k < chunks.length;) {
        if (signal?.aborted === true) throw new AbortError({ cause: signal.reason })
        let windowBytes = 0
        const window: CID[] = []
        let end = k
        while (end < chunks.length && (end === k || windowBytes < STREAM_BYTES)) {
          window.push(chunks[end]!.cid)
          windowBytes += chunks[end]!.length
          end++
        }
        const got = await fetchAll(window, getBlock, concurrency)
        for (; k < end; k++) {
          const c = chunks[k]!
          const block = got.get(c.cid.toString())!
          if (block.length !== c.length) throw new BlockMismatchError(`block ${c.cid.toString()} is ${block.length} bytes, the manifest says ${c.length}`, { path: e.path })
          for (let off = 0; off < block.length;) off += writeSync(fd, block, off, block.length - off)
        }
      }
      if (preserveOwner) fchownSync(fd, e.uid, e.gid)
      for (const [n, v] of xattrsOf(e.xattrs) ?? []) lsetxattr(abs, n, v)
      fchmodSync(fd, mode(e.mode))
    } finally {
      closeSync(fd)
    }
    lutimens(abs, e.mtime, e.mtime)
  }

  // Windows read ahead of the writes (below). Made before the pool: an option it
  // refuses (a NaN, say) leaves nothing to clean up.
  interface Window { list: Entry[], from: number, to: number, weight: number, blocks: Promise<Map<string, Uint8Array>> }
  const ahead = new Lookahead<Window>(windowsAhead, prefetchBytes)
  const pool = opts.pool ?? new FsPool()
  const inFlight: Array<Promise<void>> = []
  let items: WriteItem[] = []
  // Files whose content is inline and that carry no xattrs go in one buffer, made
  // in one native call by the worker.
  const small = new FileBatch()
  let smallRels: string[] = []
  let itemBytes = 0
  const writeBatchBytes = Math.max(64 * 1024, Math.floor(prefetchBytes / WRITE_BATCH_SHARE))
  // A window's weight stays counted until every worker request that carries one of
  // its files is done: requests are numbered as they are sent, and a window waits
  // for the number of the last one holding its files.
  let sent = 0
  let settledUpTo = 0
  const settledOutOfOrder = new Set<number>()
  const holds: Array<{ after: number, weight: number }> = []
  const releaseWritten = (): void => {
    while (holds.length > 0 && holds[0]!.after <= settledUpTo) ahead.release(holds.shift()!.weight)
  }
  const send = async (): Promise<void> => {
    if (items.length > 0 || small.count > 0) {
      const batch = items
      items = []
      itemBytes = 0
      const req: PoolRequest = { kind: 'write', items: batch, options: writeOptions }
      const transfer: ArrayBuffer[] = []
      if (small.count > 0) {
        req.small = small.take()
        req.smallRels = smallRels
        smallRels = []
        transfer.push(req.small.buffer as ArrayBuffer)
      }
      // The blocks go to the worker in one buffer of their own, transferred: the
      // fetched blocks (which may sit in Buffer's shared pool) are garbage at once,
      // and the worker frees the buffer as soon as it has written it.
      const blocksBuffer = packBlocks(batch)
      if (blocksBuffer !== undefined) transfer.push(blocksBuffer)
      const seq = ++sent
      const settle = (): void => {
        settledOutOfOrder.add(seq)
        while (settledOutOfOrder.delete(settledUpTo + 1)) settledUpTo++
        releaseWritten()
      }
      const written = pool.request(req, transfer).then((res) => {
        if (res.error !== undefined) {
          const { code, message, path } = res.error
          if (code === 'ERR_BLOCK_MISMATCH') throw new BlockMismatchError(message, { path })
          throw new MaterializeError(`cannot write file (${code})`, { path, cause: Object.assign(new Error(message), { code }) })
        }
      })
      written.then(settle, settle) // awaited in order below; this also keeps an early failure from counting as unhandled
      inFlight.push(written)
    }
    while (inFlight.length > MAX_WRITES_IN_FLIGHT) await inFlight.shift()
  }

  // Windows of entries whose blocks are already on their way, read ahead of the
  // writes: entry lists are fetched and decoded, and their files' blocks asked
  // for, while earlier windows are written. A window ends where its entry list
  // does, so a tree of mostly small files (inline, no blocks) has windows of a
  // few MB: one window ahead left the writes waiting on a round trip each time.
  // What is ahead is bounded in block bytes and in windows.
  const windowBytes = Math.max(1, Math.floor(prefetchBytes / 4))
  // An entry list and, from format 2 on, its times block.
  const lists: Array<Promise<[Uint8Array, Uint8Array | undefined]>> = []
  const readAhead = async (): Promise<void> => {
    try {
      // The next entry lists are asked for as soon as this one is: their request
      // then goes out ahead of this list's blocks instead of behind them.
      const askList = (k: number): void => {
        if (k >= manifest.entries.length) return
        const times = manifest.version === 1 ? undefined : getBlock(manifest.times[k]!)
        const p = Promise.all([getBlock(manifest.entries[k]!), times])
        p.catch(() => {}) // awaited in turn below
        lists.push(p)
      }
      for (let k = 0; k < LISTS_AHEAD; k++) askList(k)
      for (let k = 0; k < manifest.entries.length; k++) {
        if (ahead.stopped) return
        const [bytes, times] = await lists.shift()!
        if (ahead.stopped) return
        askList(k + LISTS_AHEAD)
        const list = decodeEntryList(bytes, { version: manifest.version, ...(times !== undefined ? { times } : {}) })
        if (list.length === 0) throw new InvalidManifestError('an entry-list block is empty')
        for (const e of list) checker.check(e)
        opts.onEntryList?.(list)
        let i = 0
        while (i < list.length) {
          // The blocks of the files ahead, up to a quarter of prefetchBytes, fetched concurrently.
          let j = i
          let batchBytes = 0
          const wanted: CID[] = []
          const seen = new Set<string>()
          while (j < list.length && (j === i || batchBytes < windowBytes)) {
            const e = list[j++]!
            if (e.type === 'file' && e.chunks !== undefined && source.localFile?.(e) === undefined && e.size <= STREAM_BYTES) {
              for (const c of e.chunks) {
                const key = c.cid.toString()
                if (seen.has(key)) continue
                seen.add(key)
                wanted.push(c.cid)
                batchBytes += c.length
              }
            }
          }
          // The list's own bytes (its decoded entries and their inline data live as
          // long as it does) weigh on its last window, the one that lets go of it.
          const weight = batchBytes + (j === list.length ? bytes.length + (times?.length ?? 0) : 0)
          await ahead.room(weight)
          if (ahead.stopped) return
          const blocks = fetchAll(wanted, getBlock, concurrency)
          blocks.catch(() => {}) // awaited when its window is written; an early failure is not unhandled
          ahead.add({ list, from: i, to: j, weight, blocks }, weight)
          i = j
        }
      }
      ahead.end()
    } catch (err) {
      ahead.fail(err)
    }
  }
  const reader = readAhead()

  try {
    for (;;) {
      // What this side holds goes to the workers before it waits for more: held
      // bytes count against the reader's budget until written.
      if (ahead.queued === 0) await send()
      const w = await ahead.next()
      if (w === undefined) break
      // Awaited before anything else can throw: a window taken is a fetch settled.
      const blocks = await w.blocks
      if (signal?.aborted === true) throw new AbortError({ cause: signal.reason })
      const { list, to } = w
      for (let i = w.from; i < to; i++) {
        const e = list[i]!
        const abs = `${target}/${e.path}`
        try {
          switch (e.type) {
            case 'dir': {
              mkdirSync(abs, { mode: 0o700 })
              const attrs: RootAttributes = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime }
              if (e.xattrs !== undefined) attrs.xattrs = e.xattrs
              if (e.opaque === true) attrs.opaque = true
              dirs.push({ abs, attrs })
              break
            }
            case 'file': {
              if (e.chunks !== undefined && e.size > STREAM_BYTES && source.localFile?.(e) === undefined) {
                await writeStreamed(abs, e)
                break
              }
              const xattrs = xattrsOf(e.xattrs)
              if (e.chunks === undefined && xattrs === undefined) {
                small.add(abs, mode(e.mode), e.uid, e.gid, e.mtime, preserveOwner && (e.uid !== euid || e.gid !== writeOptions.egid), e.data)
                smallRels.push(e.path)
                itemBytes += e.size
                if (items.length + small.count >= WRITE_BATCH_FILES || itemBytes >= writeBatchBytes) await send()
                break
              }
              const item: WriteItem = { abs, rel: e.path, mode: mode(e.mode), uid: e.uid, gid: e.gid, mtime: e.mtime }
              if (xattrs !== undefined) item.xattrs = xattrs
              if (e.data !== undefined) item.data = e.data
              else if (e.chunks !== undefined) {
                const local = source.localFile?.(e)
                if (local !== undefined) {
                  item.src = local
                  item.lengths = e.chunks.map((c) => c.length)
                  const digests = new Uint8Array(32 * e.chunks.length)
                  e.chunks.forEach((c, k) => digests.set(c.cid.multihash.digest, k * 32))
                  item.digests = digests
                } else {
                  item.blocks = e.chunks.map((c) => {
                    const block = blocks.get(c.cid.toString())
                    if (block === undefined) throw new MaterializeError('a block was not fetched', { path: e.path })
                    if (block.length !== c.length) throw new BlockMismatchError(`block ${c.cid.toString()} is ${block.length} bytes, the manifest says ${c.length}`, { path: e.path })
                    return block
                  })
                }
              }
              items.push(item)
              itemBytes += e.size
              if (items.length + small.count >= WRITE_BATCH_FILES || itemBytes >= writeBatchBytes) await send()
              break
            }
            case 'symlink':
              symlinkSync(e.target!, abs)
              finishNode(abs, e)
              break
            case 'hardlink':
              // Its target may still be in a worker's queue: links are made at the end.
              hardlinks.push(e)
              break
            case 'whiteout':
              mknod(abs, S_IFCHR, 0, 0)
              finishNode(abs, e)
              break
            case 'fifo':
              mknod(abs, S_IFIFO | 0o600)
              chmodSync(abs, mode(e.mode))
              finishNode(abs, e)
              break
            case 'chardev':
            case 'blockdev':
              if (untrusted) throw new PolicyError('device nodes are refused in layers from peers', { path: e.path })
              mknod(abs, (e.type === 'chardev' ? S_IFCHR : S_IFBLK) | 0o600, e.rdev![0], e.rdev![1])
              chmodSync(abs, mode(e.mode))
              finishNode(abs, e)
          }
        } catch (err) {
          if (err instanceof ChunkerError) throw err
          const code = (err as NodeJS.ErrnoException).code ?? 'error'
          throw new MaterializeError(`cannot write ${e.type} (${code})`, { path: e.path, cause: err })
        }
        done++
        if (e.type === 'file') bytes += e.size
      }
      holds.push({ after: items.length + small.count > 0 ? sent + 1 : sent, weight: w.weight })
      releaseWritten()
      opts.onProgress?.({ entries: done, bytes, totalEntries: manifest.count, totalBytes: manifest.size })
    }
    checker.end()
    await send()
    while (inFlight.length > 0) await inFlight.shift()
  } finally {
    // Let every request settle before the workers go, so none writes after cleanup,
    // and no fetch of the windows ahead outlives the call.
    ahead.stop()
    await reader
    await Promise.allSettled([...ahead.drain().map(async (w) => await w.blocks), ...lists])
    await Promise.allSettled(inFlight)
    if (opts.pool === undefined) await pool.close()
  }

  for (const e of hardlinks) {
    try {
      linkSync(`${target}/${e.target!}`, `${target}/${e.path}`)
    } catch (err) {
      throw new MaterializeError(`cannot write hardlink (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { path: e.path, cause: err })
    }
  }

  // Directory attributes last, deepest first: writing into a directory changes its
  // mtime, and a read-only mode would stop the writes below it.
  dirs.push({ abs: target, attrs: manifest.root })
  for (let k = dirs.length - 1; k >= 0; k--) {
    const { abs, attrs } = dirs[k]!
    // Owner, xattrs, then mode: a read-only mode would refuse the xattrs.
    if (preserveOwner) lchownSync(abs, attrs.uid, attrs.gid)
    for (const [n, v] of xattrsOf(attrs.xattrs) ?? []) lsetxattr(abs, n, v)
    if (attrs.opaque === true) lsetxattr(abs, opaqueXattr, Uint8Array.of(0x79))
    chmodSync(abs, mode(attrs.mode))
    lutimens(abs, attrs.mtime, attrs.mtime)
  }
  return { entries: done, bytes }
}

function currentUmask (): number {
  // process.umask() without an argument is deprecated; /proc says it without changing it.
  try {
    const m = /^Umask:\s+([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))
    if (m !== null) return parseInt(m[1]!, 8)
  } catch {
    // Not Linux /proc: assume the usual mask, which only costs an extra chmod.
  }
  return 0o022
}

/** Copies the blocks of a write request into one buffer of their own, the items' blocks made views of it. */
function packBlocks (batch: WriteItem[]): ArrayBuffer | undefined {
  let total = 0
  for (const item of batch) for (const b of item.blocks ?? []) total += b.length
  if (total === 0) return undefined
  const buffer = new Uint8Array(total)
  let off = 0
  for (const item of batch) {
    if (item.blocks === undefined) continue
    item.blocks = item.blocks.map((b) => {
      buffer.set(b, off)
      off += b.length
      return buffer.subarray(off - b.length, off)
    })
  }
  return buffer.buffer
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

