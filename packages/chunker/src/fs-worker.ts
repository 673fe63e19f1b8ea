// A worker thread doing the per-file system calls of packing and materializing:
// small synchronous calls are cheapest off the main thread, and two of these
// use both cores of a CI VM.
import { parentPort } from 'node:worker_threads'
import { closeSync, constants, fchmodSync, fchownSync, openSync, readSync, writeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { lsetxattr, lutimens } from '@strata/sys'
import { chunkReader, cutPoint, MAX_CHUNK } from './fastcdc.ts'
import type { HashItem, HashResult, WorkerRequest, WorkerResponse, WriteItem, WriteOptions } from './fs-pool.ts'

const scratch = new Uint8Array(4 * MAX_CHUNK)

function failure (err: unknown, path: string): { error: { code: string, message: string, path: string } } {
  const e = err as NodeJS.ErrnoException
  return { error: { code: e.code ?? 'EIO', message: e.message, path } }
}

function hashFile (item: HashItem, inlineMax: number): HashResult {
  // O_NONBLOCK: a file swapped for a FIFO since the walk must not block the open.
  const fd = openSync(item.abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  try {
    if (item.size <= inlineMax || item.size < scratch.length - 1) {
      // Reading size + 1 bytes both takes the content and proves the end of file:
      // one system call for the many small files of a typical tree.
      let n = 0
      for (;;) {
        const got = readSync(fd, scratch, n, item.size + 1 - n, null)
        if (got === 0) break
        n += got
        if (n > item.size) break
      }
      if (n !== item.size) return { error: { code: 'ERR_CHANGED', message: 'file changed size while packing', path: item.rel } }
      if (item.size <= inlineMax) return { data: scratch.slice(0, n) }
      let pos = 0
      const lengths: number[] = []
      const digests = new Uint8Array(32 * Math.ceil(n / (16 * 1024) + 1))
      while (pos < n) {
        const len = cutPoint(scratch, pos, n)
        digests.set(createHash('sha256').update(scratch.subarray(pos, pos + len)).digest(), lengths.length * 32)
        lengths.push(len)
        pos += len
      }
      return { lengths, digests: digests.slice(0, lengths.length * 32) }
    }
    const lengths: number[] = []
    const parts: Buffer[] = []
    let total = 0
    chunkReader((buf, off, len) => readSync(fd, buf, off, len, null), (chunk) => {
      parts.push(createHash('sha256').update(chunk).digest())
      lengths.push(chunk.length)
      total += chunk.length
    }, scratch)
    if (total !== item.size) return { error: { code: 'ERR_CHANGED', message: 'file changed size while packing', path: item.rel } }
    return { lengths, digests: Buffer.concat(parts) }
  } finally {
    closeSync(fd)
  }
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
      const digest = createHash('sha256').update(view).digest()
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
  let res: WorkerResponse
  if (req.kind === 'hash') {
    res = {
      id: req.id,
      results: req.items.map((item) => {
        try {
          return hashFile(item, req.inlineMax)
        } catch (err) {
          return failure(err, item.rel)
        }
      })
    }
  } else {
    let error: WorkerResponse['error']
    for (const item of req.items) {
      try {
        writeFile(item, req.options)
      } catch (err) {
        error = failure(err, item.rel).error
        break
      }
    }
    res = { id: req.id, results: [], error }
  }
  parentPort!.postMessage(res)
})
