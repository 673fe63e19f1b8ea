// A worker thread doing the per-file system calls of packing and materializing:
// small synchronous calls are cheapest off the main thread, and two of these
// use both cores of a CI VM.
import { parentPort } from 'node:worker_threads'
import { closeSync, constants, fchmodSync, fchownSync, openSync, readlinkSync, readSync, writeSync } from 'node:fs'
import { hash } from 'node:crypto'
import { getSystemErrorMessage, getSystemErrorName } from 'node:util'
import { D, D_FAILED, describe as describeNative, lsetxattr, lutimens, writeFiles, X } from '@strata/sys'
import { chunkReader, cutPoint, MAX_CHUNK } from './fastcdc.ts'
import { defaultOpaqueNamespace, readXattrs } from './xattrs.ts'
import { CHUNK_COUNT, CHUNK_START, DATA_LENGTH, DATA_START, STAT_FIELDS } from './fs-pool.ts'
import type { EntriesReply, EntryExtra, Failure, WorkerRequest, WorkerResponse, WriteItem, WriteOptions } from './fs-pool.ts'

const scratch = new Uint8Array(4 * MAX_CHUNK)

const S_IFMT = 0o170000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFDIR = 0o040000

function failure (err: unknown): Failure {
  const e = err as NodeJS.ErrnoException
  return { code: e.code ?? 'EIO', message: e.message }
}

/** A byte buffer that grows by doubling; `take()` hands its bytes over and starts afresh. */
class Bytes {
  buf: Uint8Array
  length = 0
  constructor (capacity: number) {
    this.buf = new Uint8Array(capacity)
  }

  reserve (n: number): void {
    if (this.length + n <= this.buf.length) return
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n))
    next.set(this.buf.subarray(0, this.length))
    this.buf = next
  }

  push (bytes: Uint8Array): void {
    this.reserve(bytes.length)
    this.buf.set(bytes, this.length)
    this.length += bytes.length
  }

  take (): Uint8Array {
    const out = new Uint8Array(this.buf.buffer, 0, this.length)
    this.buf = new Uint8Array(0)
    this.length = 0
    return out
  }
}

const CHANGED: Failure = { code: 'ERR_CHANGED', message: 'file changed size while packing' }

/**
 * Reads a regular file of `size` bytes: the whole of it into `data` when it is
 * `inline`, otherwise its chunk lengths and digests. Returns a failure instead
 * of throwing when the size no longer holds.
 */
function readFile (abs: string, size: number, inline: boolean, data: Bytes, lengths: number[], digests: Bytes): Failure | undefined {
  // O_NONBLOCK: a file swapped for a FIFO since the lstat must not block the open.
  const fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  try {
    if (inline || size < scratch.length - 1) {
      // Asking for size + 1 bytes both takes the content and proves the end of
      // file: a regular file reads short only at its end, so reaching `size` with
      // a short read is the end, and the many small files of a typical tree cost
      // one read each. More than `size` means the file grew.
      const into = inline ? (data.reserve(size + 1), data.buf) : scratch
      const at = inline ? data.length : 0
      let n = 0
      for (;;) {
        const got = readSync(fd, into, at + n, size + 1 - n, null)
        n += got
        if (got === 0 || n >= size) break
      }
      if (n !== size) return CHANGED
      if (inline) {
        data.length += n
        return undefined
      }
      for (let pos = 0; pos < n;) {
        const len = cutPoint(scratch, pos, n)
        digests.push(hash('sha256', scratch.subarray(pos, pos + len), 'buffer'))
        lengths.push(len)
        pos += len
      }
      return undefined
    }
    let total = 0
    chunkReader((buf, off, len) => readSync(fd, buf, off, len, null), (chunk) => {
      digests.push(hash('sha256', chunk, 'buffer'))
      lengths.push(chunk.length)
      total += chunk.length
    }, scratch)
    return total === size ? undefined : CHANGED
  } finally {
    closeSync(fd)
  }
}

// Where describe() puts small files and symlink targets for a batch; what does not
// fit is read by readFile() instead. Its bytes are copied out, so it is reused.
const found = new Uint8Array(2 * 1024 * 1024)

function systemFailure (errno: number, what: string, abs?: string): Failure {
  const code = getSystemErrorName(-errno)
  return { code, message: `${code}: ${getSystemErrorMessage(-errno)}, ${what}${abs === undefined ? '' : ` '${abs}'`}` }
}

// The hardlinked inodes (dev:ino) this worker has read in the current walk. A
// worker takes its batches in the walk's order, so an inode it has read was read
// for an earlier path in manifest order: the later ones become hardlink entries,
// whose content nobody uses. Another walk starts the set afresh.
let linksWalk = -1
const linksRead = new Set<string>()

/** lstat, xattrs, symlink target and content of each path, in order. */
function describe (req: Extract<WorkerRequest, { kind: 'entries' }>): { reply: EntriesReply, transfer: ArrayBuffer[] } {
  const paths = req.paths.split('\0')
  const stats = new Float64Array(paths.length * STAT_FIELDS)
  if (req.walk !== linksWalk) {
    linksWalk = req.walk
    linksRead.clear()
  }
  // One call for the lstats, the xattr checks, the symlinks and the small files.
  const used = describeNative(req.paths, stats, found, req.inlineMax)
  // Sized for what describe() read: most batches need no more, and every batch's
  // buffers are allocated here and freed on the main thread, so waste adds up.
  const data = new Bytes(used + 4096)
  data.push(found.subarray(0, used))
  const digests = new Bytes(32 * 64)
  const lengths: number[] = []
  const extras: Array<[number, EntryExtra]> = []
  for (let k = 0; k < paths.length; k++) {
    const abs = paths[k]!
    const o = k * STAT_FIELDS
    const failed = stats[o + D.failed]!
    const errno = stats[o + D.errno]!
    stats[o + D.failed] = 0
    stats[o + D.errno] = 0
    if (failed === D_FAILED.lstat) {
      extras.push([k, { error: systemFailure(errno, 'lstat', abs) }])
      continue
    }
    let extra: EntryExtra | undefined
    const fmt = stats[o + X.mode]! & S_IFMT
    try {
      if (stats[o + X.hasXattrs] === 1) {
        const x = readXattrs(abs, fmt === S_IFDIR, req.opaque ?? defaultOpaqueNamespace())
        if (x.xattrs !== undefined) (extra ??= {}).xattrs = x.xattrs
        if (x.opaque) (extra ??= {}).opaque = true
        if (x.foreign !== undefined) (extra ??= {}).foreign = x.foreign
      }
      if (fmt === S_IFLNK) {
        const at = stats[o + DATA_START]!
        const length = stats[o + DATA_LENGTH]!
        ;(extra ??= {}).target = length >= 0 ? Buffer.from(found.buffer, found.byteOffset + at, length).toString('utf8') : readlinkSync(abs)
        stats[o + DATA_LENGTH] = -1
      }
    } catch (err) {
      extras.push([k, { error: failure(err) }])
      continue
    }
    if (failed === D_FAILED.read) (extra ??= {}).readError = systemFailure(errno, 'read', abs)
    else if (failed === D_FAILED.changed) (extra ??= {}).readError = CHANGED
    const size = stats[o + X.size]!
    const inode = fmt === S_IFREG && stats[o + X.nlink]! > 1 ? `${stats[o + X.dev]}:${stats[o + X.ino]}` : undefined
    if (inode !== undefined && stats[o + DATA_LENGTH] === -1 && linksRead.has(inode)) {
      (extra ??= {}).linkSeen = true
      extras.push([k, extra])
      continue
    }
    if (failed === D_FAILED.none && fmt === S_IFREG && stats[o + DATA_LENGTH] === -1 && size > 0 && size <= req.maxFileSize) {
      const inline = size <= req.inlineMax
      const dataStart = data.length
      const chunkStart = lengths.length
      let readError: Failure | undefined
      try {
        readError = readFile(abs, size, inline, data, lengths, digests)
      } catch (err) {
        readError = failure(err)
      }
      if (readError !== undefined) {
        (extra ??= {}).readError = readError
        // What the failed read left behind.
        data.length = dataStart
        lengths.length = chunkStart
        digests.length = chunkStart * 32
      } else if (inline) {
        stats[o + DATA_START] = dataStart
        stats[o + DATA_LENGTH] = size
      } else {
        stats[o + CHUNK_START] = chunkStart
        stats[o + CHUNK_COUNT] = lengths.length - chunkStart
      }
      if (readError === undefined && inode !== undefined) linksRead.add(inode)
    }
    if (extra !== undefined) extras.push([k, extra])
  }
  const reply = { stats, data: data.take(), lengths: Uint32Array.from(lengths), digests: digests.take(), extras }
  return { reply, transfer: [reply.stats.buffer, reply.data.buffer, reply.lengths.buffer, reply.digests.buffer] as ArrayBuffer[] }
}

function writeAll (fd: number, data: Uint8Array): void {
  let off = 0
  while (off < data.length) off += writeSync(fd, data, off, data.length - off)
}

function copyVerified (from: string, fd: number, item: WriteItem): void {
  const src = openSync(from, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const lengths = item.lengths!
    const digests = item.digests!
    for (let i = 0; i < lengths.length; i++) {
      const want = lengths[i]!
      let got = 0
      while (got < want) {
        const n = readSync(src, scratch, got, want - got, null)
        if (n === 0) break
        got += n
      }
      const view = scratch.subarray(0, got)
      const digest = hash('sha256', view, 'buffer')
      if (got !== want || Buffer.compare(digest, digests.subarray(i * 32, i * 32 + 32)) !== 0) {
        throw Object.assign(new Error(`local copy of ${item.rel} does not match its manifest`), { code: 'ERR_BLOCK_MISMATCH' })
      }
      writeAll(fd, view)
    }
  } finally {
    closeSync(src)
  }
}

function writeFile (item: WriteItem, opts: WriteOptions): void {
  // Attributes go owner, xattrs, mode: chown clears setuid/setgid and file
  // capabilities, and setting a user.* xattr needs write permission on the file.
  const wanted = item.xattrs !== undefined ? 0o600 : item.mode & 0o777
  const fd = openSync(item.abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, wanted)
  try {
    if (item.data !== undefined) writeAll(fd, item.data)
    else if (item.blocks !== undefined) for (const b of item.blocks) writeAll(fd, b)
    else if (item.src !== undefined) copyVerified(item.src, fd, item)
    const chown = opts.preserveOwner && (item.uid !== opts.euid || item.gid !== opts.egid)
    if (chown) fchownSync(fd, item.uid, item.gid)
    if (item.xattrs !== undefined) for (const [n, v] of item.xattrs) lsetxattr(item.abs, n, v)
    // open() applied the umask and chown() cleared setuid/setgid: chmod only when either matters.
    if ((wanted & opts.umask) !== 0 || item.mode !== wanted) fchmodSync(fd, item.mode)
  } finally {
    closeSync(fd)
  }
  lutimens(item.abs, item.mtime, item.mtime)
}

parentPort!.on('message', (req: WorkerRequest) => {
  if (req.kind === 'entries') {
    const { reply, transfer } = describe(req)
    parentPort!.postMessage({ id: req.id, entries: reply } satisfies WorkerResponse, transfer)
    return
  }
  let error: WorkerResponse['error']
  if (req.small !== undefined) {
    const failed = writeFiles(req.small, req.options.umask)
    if (failed !== undefined) {
      const error = { ...systemFailure(failed.errno, failed.syscall), path: req.smallRels![failed.index] ?? '' }
      parentPort!.postMessage({ id: req.id, error } satisfies WorkerResponse)
      return
    }
  }
  for (const item of req.items) {
    try {
      writeFile(item, req.options)
    } catch (err) {
      error = { ...failure(err), path: item.rel }
      break
    }
  }
  release(req)
  parentPort!.postMessage({ id: req.id, error } satisfies WorkerResponse)
})

/**
 * Frees the buffers a write request brought now rather than at this thread's next
 * collection, which a thread that allocates little may not reach for a long time:
 * detaching an ArrayBuffer lets go of its memory.
 */
function release (req: WorkerRequest & { kind: 'write' }): void {
  const buffers = new Set<ArrayBuffer>()
  if (req.small !== undefined) buffers.add(req.small.buffer as ArrayBuffer)
  for (const item of req.items) for (const b of item.blocks ?? []) buffers.add(b.buffer as ArrayBuffer)
  for (const b of buffers) if (!b.detached) b.transfer(0)
}
