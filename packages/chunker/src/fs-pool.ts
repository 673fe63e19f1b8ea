import { Worker } from 'node:worker_threads'
import { availableParallelism } from 'node:os'

export interface HashItem {
  abs: string
  rel: string
  size: number
}

export type HashResult =
  | { data: Uint8Array }
  | { lengths: number[], digests: Uint8Array }
  | { error: { code: string, message: string, path: string } }

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
  | { kind: 'hash', items: HashItem[], inlineMax: number }
  | { kind: 'write', items: WriteItem[], options: WriteOptions }

export type WorkerRequest = PoolRequest & { id: number }

export interface WorkerResponse {
  id: number
  results: HashResult[]
  error?: { code: string, message: string, path: string } | undefined
}

interface Slot {
  worker: Worker
  pending: number
}

/**
 * A few worker threads for per-file system calls. Requests go to the least busy
 * worker; each answer resolves its own promise. A worker that dies fails only the
 * requests it held and is replaced, so one bad file never disables a long-lived
 * pool. Workers are unref'd and ended by close(), so a pool never keeps the
 * process alive.
 */
export class FsPool {
  readonly #slots: Slot[] = []
  readonly #waiting = new Map<number, { resolve: (r: WorkerResponse) => void, reject: (e: Error) => void, slot: Slot }>()
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
    const worker = new Worker(new URL('./fs-worker.ts', import.meta.url), { resourceLimits: { maxYoungGenerationSizeMb: 8, maxOldGenerationSizeMb: 64 } })
    worker.unref()
    slot.worker = worker
    worker.on('message', (res: WorkerResponse) => {
      const w = this.#waiting.get(res.id)
      if (w === undefined) return
      this.#waiting.delete(res.id)
      slot.pending--
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
    }
    worker.on('error', fail)
    worker.on('exit', (code) => fail(new Error(`fs worker exited with code ${code}`)))
  }

  /** Requests not yet answered, over all workers. */
  get pending (): number {
    return this.#waiting.size
  }

  request (req: PoolRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResponse> {
    if (this.#closed) return Promise.reject(new Error('the fs worker pool is closed'))
    const id = ++this.#next
    const slot = this.#slots.reduce((a, b) => (b.pending < a.pending ? b : a))
    slot.pending++
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject, slot })
      slot.worker.postMessage({ ...req, id }, transfer)
    })
  }

  async close (): Promise<void> {
    this.#closed = true
    await Promise.all(this.#slots.map((s) => s.worker.terminate()))
  }
}
