import { Worker } from 'node:worker_threads'
import { getCompileCacheDir } from 'node:module'
import { availableParallelism } from 'node:os'
import { D, DESCRIBE_FIELDS } from '@strata/sys'
import type { OpaqueNamespace } from './xattrs.ts'

/**
 * What a worker learns about each path of an 'entries' request, STAT_FIELDS
 * numbers a path in `stats`: describe()'s lstat fields (X of @strata/sys), then where the
 * content of a regular file went. Numbers in one typed array, and the bytes of
 * many files in one buffer, so a reply costs a few copies rather than one object
 * per entry.
 */
export const STAT_FIELDS = DESCRIBE_FIELDS
/** Offset and length of a small file's bytes in `data`; length -1 when not there. */
export const DATA_START = D.dataStart
export const DATA_LENGTH = D.dataLength
/**
 * Index of a chunked file's first chunk in `lengths` (and `digests`, 32 bytes
 * each), and how many: in the places of describe()'s errno and failure, which the
 * worker has taken out by then.
 */
export const CHUNK_START = D.errno
export const CHUNK_COUNT = D.failed

export interface Failure {
  code: string
  message: string
}

/** The rarer findings about one path, kept apart from the numbers. */
export interface EntryExtra {
  /** lstat, readlink or the xattrs failed: the entry cannot be described. */
  error?: Failure
  /** The content could not be read (it matters only if the path turns out not to be a hardlink). */
  readError?: Failure
  target?: string
  /** The xattrs a layer carries. */
  xattrs?: Array<[string, Uint8Array]>
  opaque?: true
  /** xattrs the layer does not carry but a mount would show or act on. */
  foreign?: string[]
  /** Not read: the same worker read this inode (hardlinked) for an earlier path of the same walk. */
  linkSeen?: true
}

export interface EntriesReply {
  stats: Float64Array
  data: Uint8Array
  lengths: Uint32Array
  digests: Uint8Array
  /** By index in the request's paths, in order. */
  extras: Array<[number, EntryExtra]>
}

export interface WriteItem {
  abs: string
  rel: string
  mode: number
  uid: number
  gid: number
  mtime: [number, number]
  xattrs?: Array<[string, Uint8Array]>
  /** Inline content. */
  data?: Uint8Array
  /** Verified blocks, in order. */
  blocks?: Uint8Array[]
  /** A local file to copy, checked chunk by chunk against lengths and digests. */
  src?: string
  lengths?: number[]
  digests?: Uint8Array
}

export interface WriteOptions {
  preserveOwner: boolean
  umask: number
  euid: number
  egid: number
}

export type PoolRequest =
  /**
   * Absolute paths joined by NUL; files up to inlineMax bytes come back whole, past
   * maxFileSize not at all. `walk` names the walk the batch belongs to: a worker
   * reads a hardlinked inode once per walk. `opaque`: whose `overlay.opaque` marks an opaque dir (default: `trusted` as root).
   */
  | { kind: 'entries', paths: string, inlineMax: number, maxFileSize: number, walk: number, opaque?: OpaqueNamespace }
  /** `small`: files with their content inline and no xattrs, for @strata/sys writeFiles(); `smallRels` names them. */
  | { kind: 'write', items: WriteItem[], options: WriteOptions, small?: Uint8Array, smallRels?: string[] }

export type WorkerRequest = PoolRequest & { id: number }

export interface WorkerResponse {
  id: number
  entries?: EntriesReply
  error?: { code: string, message: string, path: string } | undefined
}

interface Slot {
  worker: Worker
  pending: number
}

interface Waiting {
  resolve: (r: WorkerResponse) => void
  reject: (e: Error) => void
  slot: Slot
}

// Requests one worker holds at most: one to work on and one to start right after
// it. The rest wait in the pool for whichever worker frees up first, so a worker
// busy with one large file does not sit on requests another could take.
const PER_WORKER = 2

/**
 * A few worker threads for per-file system calls. Each request goes to the
 * first worker with room for it; each answer resolves its own promise. A worker
 * that dies fails only the requests it held and is replaced, so one bad file
 * never disables a long-lived pool. Workers are unref'd and ended by close(), so
 * a pool never keeps the process alive.
 */
export class FsPool {
  readonly #slots: Slot[] = []
  readonly #waiting = new Map<number, Waiting>()
  readonly #queue: Array<{ req: WorkerRequest, transfer: ArrayBuffer[], resolve: Waiting['resolve'], reject: Waiting['reject'] }> = []
  #next = 0
  #closed = false

  constructor (size = Math.max(1, Math.min(4, availableParallelism()))) {
    for (let i = 0; i < size; i++) {
      const slot = { pending: 0 } as Slot
      this.#start(slot)
      this.#slots.push(slot)
    }
  }

  #start (slot: Slot): void {
    // A small young generation: these workers allocate little, and RSS matters on a CI VM.
    // A worker does not share the thread's compile cache unless its environment
    // names it: without, each worker strips and compiles its TypeScript afresh
    // at every start.
    const cache = getCompileCacheDir()
    const worker = new Worker(new URL('./fs-worker.ts', import.meta.url), {
      resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: 64 },
      ...(cache !== undefined ? { env: { ...process.env, NODE_COMPILE_CACHE: cache } } : {})
    })
    worker.unref()
    slot.worker = worker
    worker.on('message', (res: WorkerResponse) => {
      const w = this.#waiting.get(res.id)
      if (w === undefined) return
      this.#waiting.delete(res.id)
      slot.pending--
      this.#dispatch()
      w.resolve(res)
    })
    let failed = false
    const fail = (err: Error): void => {
      if (failed || this.#closed) return
      failed = true
      for (const [id, w] of this.#waiting) {
        if (w.slot !== slot) continue
        this.#waiting.delete(id)
        w.reject(err)
      }
      slot.pending = 0
      void worker.terminate()
      this.#start(slot)
      this.#dispatch()
    }
    worker.on('error', fail)
    worker.on('exit', (code) => fail(new Error(`fs worker exited with code ${code}`)))
  }

  #dispatch (): void {
    while (this.#queue.length > 0) {
      const slot = this.#slots.reduce((a, b) => (b.pending < a.pending ? b : a))
      if (slot.pending >= PER_WORKER) return
      const { req, transfer, resolve, reject } = this.#queue.shift()!
      slot.pending++
      this.#waiting.set(req.id, { resolve, reject, slot })
      slot.worker.postMessage(req, transfer)
    }
  }

  /** Requests not yet answered, over all workers. */
  get pending (): number {
    return this.#waiting.size + this.#queue.length
  }

  request (req: PoolRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResponse> {
    if (this.#closed) return Promise.reject(new Error('the fs worker pool is closed'))
    const id = ++this.#next
    return new Promise((resolve, reject) => {
      this.#queue.push({ req: { ...req, id }, transfer, resolve, reject })
      this.#dispatch()
    })
  }

  async close (): Promise<void> {
    this.#closed = true
    for (const q of this.#queue.splice(0)) q.reject(new Error('the fs worker pool is closed'))
    await Promise.all(this.#slots.map((s) => s.worker.terminate()))
  }
}
