import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

/** A path as the kernel sees it: a string (UTF-8) or raw bytes. */
export type SysPath = string | Buffer

interface Binding {
  lgetxattrs(path: SysPath): Array<[string, Buffer]>
  lsetxattr(path: SysPath, name: string, value: Uint8Array): void
  mknod(path: SysPath, mode: number, major: number, minor: number): void
  lutimens(path: SysPath, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void
  flock(fd: number, exclusive: boolean, wait: boolean): boolean
  enableVerity(fd: number): boolean
  isVerity(fd: number): boolean
  statTree?(path: SysPath, maxBytes: number, skip?: string): Buffer
  statTreeAsync?(path: SysPath, maxBytes: number, skip?: string): Promise<Buffer>
  describe(paths: string, out: Float64Array, data: Uint8Array, inlineMax: number): number
  writeFiles(batch: Uint8Array, umask: number): WriteFilesFailure | undefined
  mallocInfo?(): MallocInfo
  mallocTrim?(): boolean
  hugePages?(on?: boolean): boolean
}

const require = createRequire(import.meta.url)
const binding = require('../build/Release/strata_sys.node') as Binding

/** Every extended attribute of `path` itself (a symlink is not followed), sorted by name. */
export function lgetxattrs (path: SysPath): Array<[string, Buffer]> {
  const list = binding.lgetxattrs(path)
  if (list.length > 1) list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  return list
}

/** Sets one extended attribute on `path` itself (a symlink is not followed). */
export function lsetxattr (path: SysPath, name: string, value: Uint8Array): void {
  binding.lsetxattr(path, name, value)
}

export const S_IFIFO = 0o010000
export const S_IFCHR = 0o020000
export const S_IFBLK = 0o060000

/** Creates a device node or FIFO; `mode` includes the file type bits. */
export function mknod (path: SysPath, mode: number, major = 0, minor = 0): void {
  binding.mknod(path, mode, major, minor)
}

/** Sets atime and mtime with nanosecond precision, without following a symlink. */
export function lutimens (path: SysPath, atime: readonly [number, number], mtime: readonly [number, number]): void {
  binding.lutimens(path, atime[0], atime[1], mtime[0], mtime[1])
}

/**
 * An advisory lock on an open file. With `wait` false, returns false instead of
 * blocking when another process holds a conflicting lock.
 */
export function flock (fd: number, opts: { exclusive: boolean, wait: boolean }): boolean {
  return binding.flock(fd, opts.exclusive, opts.wait)
}

/** Field indexes of describe()'s output: an lstat, and whether the path has any xattr. */
export const X = { mode: 0, uid: 1, gid: 2, size: 3, mtimeSec: 4, mtimeNsec: 5, ino: 6, dev: 7, nlink: 8, rdevMajor: 9, rdevMinor: 10, hasXattrs: 11 } as const

/** describe()'s numbers a path: X's fields, then D's. */
export const DESCRIBE_FIELDS = 16

/**
 * Fields of describe()'s output past X's: where the content (or symlink target)
 * went in `data` and its length (-1: not read), then an errno and what failed
 * (D_FAILED: 0 nothing, 1 the lstat or readlink, 2 opening or reading the content,
 * 3 the content was not the size lstat gave).
 */
export const D = { dataStart: 12, dataLength: 13, errno: 14, failed: 15 } as const
export const D_FAILED = { none: 0, lstat: 1, read: 2, changed: 3 } as const

/**
 * An lstat (fields X) of many absolute paths (joined by NUL) in one call, whether
 * each has any extended attribute, plus the content of
 * each regular file of 1..inlineMax bytes and the target of each symlink, read
 * into `data` one after another. Siblings go through one descriptor of their
 * directory. Content that does not fit in `data` is left unread (length -1) for
 * the caller. Fills DESCRIBE_FIELDS numbers a path in `out` and returns the bytes
 * of `data` used. Errors are reported per path, never thrown.
 */
export function describe (paths: string, out: Float64Array, data: Uint8Array, inlineMax: number): number {
  return binding.describe(paths, out, data, inlineMax)
}

/** Where writeFiles() stopped, and why. */
export interface WriteFilesFailure {
  /** Which file of the batch, in the order added. */
  index: number
  errno: number
  syscall: string
}

/**
 * Files for writeFiles(), encoded one after another into one buffer that can be
 * transferred to a worker: per file, little-endian, u16 path length, the path,
 * u32 mode, uid, gid, flags (1: chown), i64 mtime seconds, u32 nanoseconds, u32
 * data length, the data.
 */
export class FileBatch {
  #buf = Buffer.alloc(64 * 1024)
  #view = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#buf.length)
  #length = 0
  count = 0

  get bytes (): number {
    return this.#length
  }

  add (abs: string, mode: number, uid: number, gid: number, mtime: readonly [number, number], chown: boolean, data: Uint8Array | undefined): void {
    const pathBytes = Buffer.byteLength(abs)
    if (pathBytes === 0 || pathBytes >= 4096) throw new RangeError(`path of ${pathBytes} bytes: ${abs.slice(0, 200)}`)
    const dataLength = data?.length ?? 0
    this.#reserve(2 + pathBytes + 32 + dataLength)
    const v = this.#view
    let at = this.#length
    v.setUint16(at, pathBytes, true)
    at += 2
    this.#buf.write(abs, at, 'utf8')
    at += pathBytes
    v.setUint32(at, mode, true)
    v.setUint32(at + 4, uid, true)
    v.setUint32(at + 8, gid, true)
    v.setUint32(at + 12, chown ? 1 : 0, true)
    v.setBigInt64(at + 16, BigInt(mtime[0]), true)
    v.setUint32(at + 24, mtime[1], true)
    v.setUint32(at + 28, dataLength, true)
    at += 32
    if (data !== undefined) this.#buf.set(data, at)
    this.#length = at + dataLength
    this.count++
  }

  /** The encoded files; the batch starts afresh. */
  take (): Uint8Array {
    const out = new Uint8Array(this.#length)
    out.set(this.#buf.subarray(0, this.#length))
    this.#length = 0
    this.count = 0
    return out
  }

  #reserve (n: number): void {
    if (this.#length + n <= this.#buf.length) return
    const next = Buffer.alloc(Math.max(this.#buf.length * 2, this.#length + n))
    next.set(this.#buf.subarray(0, this.#length))
    this.#buf = next
    this.#view = new DataView(next.buffer, next.byteOffset, next.length)
  }
}

/**
 * Creates the files of a FileBatch, each exclusively (never through a symlink or
 * over an existing file), through one descriptor of its directory: content,
 * owner (when flagged), mode (chmod only when the umask or special bits need it),
 * and mtime as atime and mtime, on the open file. Returns undefined, or where it
 * stopped at the first failure.
 */
export function writeFiles (batch: Uint8Array, umask: number): WriteFilesFailure | undefined {
  return binding.writeFiles(batch, umask)
}

/**
 * Path of the `strata-sandbox` executable (native/sandbox.c) that runs a step's
 * shell inside its view: pivot_root, masks, reduced capabilities, seccomp.
 */
export const SANDBOX_HELPER = fileURLToPath(new URL('../build/Release/strata-sandbox', import.meta.url))

/**
 * Turns fs-verity on for the file open read-only at `fd` (sha256, 4 KiB blocks):
 * the kernel then refuses to open it for writing and checks every read against
 * its Merkle tree. Returns false when it was on already. Throws EOPNOTSUPP (code
 * ENOTSUP) or ENOTTY where the kernel or the filesystem has no fs-verity.
 */
export function enableVerity (fd: number): boolean {
  // A build of the module older than this source lacks the call: as if the kernel had none.
  if (typeof binding.enableVerity !== 'function') throw Object.assign(new Error('enableVerity: this build of @strata/sys predates fs-verity; rebuild it (npm rebuild @strata/sys)'), { code: 'ENOSYS' })
  return binding.enableVerity(fd)
}

/** Whether fs-verity is on for the file open at `fd`. */
export function isVerity (fd: number): boolean {
  return binding.isVerity(fd)
}

/**
 * One line per path under `dir` (itself first, as the empty path), depth first,
 * siblings sorted by name bytes: `rel \0 inode \0 mode \0 ctime in ns \0 size \n`,
 * all numbers in decimal; ctime is 0 for a whiteout (a 0/0 character device). Never follows a symlink. With `skip`
 * (a path relative to `dir`), that directory is listed but not walked. Throws E2BIG past `maxBytes` of
 * output. Undefined when this build of the module predates it.
 */
export const statTree: ((dir: SysPath, maxBytes: number, skip?: string) => Buffer) | undefined =
  typeof binding.statTree === 'function' ? (dir, maxBytes, skip) => binding.statTree!(dir, maxBytes, skip) : undefined

/** statTree on a libuv thread, so that a walk of a large tree does not stall the event loop. */
export const statTreeAsync: ((dir: SysPath, maxBytes: number, skip?: string) => Promise<Buffer>) | undefined =
  typeof binding.statTreeAsync === 'function' ? async (dir, maxBytes, skip) => await binding.statTreeAsync!(dir, maxBytes, skip) : undefined

/** glibc malloc's bytes, summed over its arenas. */
export interface MallocInfo {
  /** Held by its heaps (the main heap's brk and the threads' arenas). */
  heap: number
  /** Held in chunks mmap'd one by one (large allocations). */
  mmapped: number
  /** Handed out and not yet freed. */
  inUse: number
  /** Free inside the heaps: kept for reuse, still resident where touched. */
  free: number
  /** Free at the main heap's top. */
  top: number
}

/** glibc malloc's figures; undefined when this build of the module predates the call. */
export const mallocInfo: (() => MallocInfo) | undefined =
  typeof binding.mallocInfo === 'function' ? () => binding.mallocInfo!() : undefined

/**
 * Gives malloc's free pages back to the kernel, from inside its heaps as well as their
 * tops (glibc's malloc_trim(0)); true when any were. Undefined when this build predates it.
 */
export const mallocTrim: (() => boolean) | undefined =
  typeof binding.mallocTrim === 'function' ? () => binding.mallocTrim!() : undefined

/**
 * Whether the kernel may back this process's memory with transparent huge pages, at a
 * page fault or by khugepaged's collapse (prctl PR_SET_THP_DISABLE, for every thread).
 * With `on`, sets it. Returns the setting before the call. Undefined when this build
 * predates it.
 */
export const hugePages: ((on?: boolean) => boolean) | undefined =
  typeof binding.hugePages === 'function' ? (on) => (on === undefined ? binding.hugePages!() : binding.hugePages!(on)) : undefined
