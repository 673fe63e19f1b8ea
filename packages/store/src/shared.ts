import { AsyncLocalStorage } from 'node:async_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { FsPool, readManifest } from '@strata/chunker'
import type { Entry, MaterializeOptions } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { StoreClosedError } from './errors.ts'
import { commitError, packCommit, sameFilesystem } from './commit.ts'
import type { PackedTree } from './commit.ts'
import { ManifestSpill } from './spill.ts'
import { takeLease } from './lease.ts'
import { acquireTurn, acquireUse, othersWaiting } from './lock.ts'
import type { LockWait } from './lock.ts'
import { openLocked, prepare } from './open.ts'
import type { OpenStoreInit } from './open.ts'
import type { LayerStore, LocalStore } from './store.ts'
import type { BlockSource, CommitOptions, GcOptions, GcReport, LayerCheck, LayerInfo, LayerVerification, RestoreOptions, Store, VerifyOptions } from './types.ts'

const IDLE_MS = 500
/** How often an idle turn checks whether another process waits for it. */
const IDLE_POLL_MS = 10
const MAX_TURN_MS = 200
const YIELD_MS = 50
const NOTICE_MS = 1000

export interface SharedStoreInit extends OpenStoreInit {
  /** How long the index stays open after the last call ended, for this process's next call; given up at once when another process waits. Default 500 ms. */
  idleMs?: number
  /** Past this long holding the store, a turn ends at its next pause when another process waits. Default 200 ms. */
  maxTurnMs?: number
  /** Fail a call with StoreBusyError once it has waited this long for another process. Default: no bound (`signal` still aborts). */
  waitMs?: number
  /** Called once a wait for another process has lasted `noticeMs` (default 1000 ms). */
  onWait?: () => void
  noticeMs?: number
}

/** The store, opened for each call (or each `hold`) and let go between them, so that other processes on this machine take turns with it. */
export interface SharedStore extends Store, LocalStore {
  /** Keeps the store open while `fn` runs: the store's calls inside it take no turn of their own. */
  hold<T>(fn: () => Promise<T>): Promise<T>
}

interface Turn {
  store: Promise<LayerStore>
  /** When the index was open (performance.now()), once it is. */
  opened: number | undefined
  /** No new call joins it; it closes when the last one ends. */
  ending: boolean
  closing: boolean
  ended: Promise<void>
  end: () => void
}

/**
 * Opens the store under `dataDir` for sharing with other processes of this
 * machine: the data dir's lock and the index are held only while a call is in
 * flight (plus `idleMs`), each turn opening the index and making it consistent
 * as openStore does (doc/decisions/shared-store.md). An exclusive opener
 * (openStore, the daemon) waits for every shared store to close, and the reverse.
 */
export async function openSharedStore (init: SharedStoreInit): Promise<SharedStore> {
  const { dataDir, log } = prepare(init)
  const wait: LockWait = { wait: init.wait ?? true, signal: init.signal, log, waitMs: init.waitMs, onWait: init.onWait, noticeMs: init.noticeMs ?? NOTICE_MS }
  const releaseUse = await acquireUse(dataDir, wait)
  const store = new SharedLayerStore(dataDir, log, releaseUse, wait, init)
  try {
    // A first turn: a store of another version, or one that cannot be opened, fails here.
    await store.hold(async () => {})
  } catch (err) {
    await store.close()
    throw err
  }
  return store
}

class SharedLayerStore implements SharedStore {
  readonly dataDir: string
  readonly #log: Logger
  readonly #releaseUse: () => void
  readonly #wait: LockWait
  readonly #init: SharedStoreInit
  readonly #idleMs: number
  readonly #maxTurnMs: number
  readonly #inHold = new AsyncLocalStorage<boolean>()
  #turn: Turn | undefined
  #active = 0
  #idle: NodeJS.Timeout | undefined
  /** After a turn ended for another process, this one waits a little before it asks again, so that the other gets it. */
  #yielded: Promise<void> = Promise.resolve()
  #pool: FsPool | undefined
  #closed = false

  constructor (dataDir: string, log: Logger, releaseUse: () => void, wait: LockWait, init: SharedStoreInit) {
    this.dataDir = dataDir
    this.#log = log
    this.#releaseUse = releaseUse
    this.#wait = wait
    this.#init = init
    this.#idleMs = init.idleMs ?? IDLE_MS
    this.#maxTurnMs = init.maxTurnMs ?? MAX_TURN_MS
  }

  /** File workers kept across turns: starting them costs more than a turn. */
  readonly #workers = (): FsPool => {
    this.#pool ??= this.#init.pool ?? new FsPool()
    return this.#pool
  }

  async #use<T>(fn: (store: LayerStore) => Promise<T>): Promise<T> {
    const store = await this.#acquire()
    try {
      return await fn(store)
    } finally {
      this.#release()
    }
  }

  async #acquire (): Promise<LayerStore> {
    for (;;) {
      if (this.#closed) throw new StoreClosedError(this.dataDir)
      const turn = this.#turn
      if (turn === undefined) {
        await this.#yielded
        if (this.#turn === undefined && !this.#closed) this.#turn = this.#begin()
        continue
      }
      // Inside hold() the turn is ours until it returns: waiting for it to end would never end.
      const nested = this.#inHold.getStore() === true && !turn.closing
      if (!nested) {
        if (turn.ending) {
          await turn.ended
          continue
        }
        if (turn.opened !== undefined && performance.now() - turn.opened > this.#maxTurnMs && othersWaiting(this.dataDir)) {
          turn.ending = true
          if (this.#active === 0) void this.#end(turn, true)
          await turn.ended
          continue
        }
      }
      this.#active++
      clearInterval(this.#idle)
      this.#idle = undefined
      try {
        return await turn.store
      } catch (err) {
        this.#active--
        throw err
      }
    }
  }

  #release (): void {
    this.#active--
    const turn = this.#turn
    if (this.#active > 0 || turn === undefined) return
    const waited = othersWaiting(this.dataDir)
    if (turn.ending || this.#closed || waited) {
      void this.#end(turn, waited || (turn.ending && !this.#closed))
      return
    }
    // Idle, the turn is kept for this process's next call, and given up as soon as another process asks.
    const since = performance.now()
    const idle = setInterval(() => {
      if (this.#turn !== turn || turn.closing) {
        clearInterval(idle)
        return
      }
      if (this.#active > 0) return
      const asked = othersWaiting(this.dataDir)
      if (!asked && performance.now() - since < this.#idleMs) return
      void this.#end(turn, asked)
    }, Math.min(IDLE_POLL_MS, this.#idleMs))
    this.#idle = idle
  }

  #begin (): Turn {
    let end!: () => void
    const ended = new Promise<void>((resolve) => { end = resolve })
    const turn: Turn = { store: Promise.resolve(undefined as unknown as LayerStore), opened: undefined, ending: false, closing: false, ended, end }
    turn.store = (async () => {
      const release = await acquireTurn(this.dataDir, this.#wait)
      const store = await openLocked(this.dataDir, this.#log, release, { ...this.#init, workers: this.#workers })
      turn.opened = performance.now()
      return store
    })()
    turn.store.catch(() => {
      if (this.#turn === turn) this.#turn = undefined
      end()
    })
    return turn
  }

  async #end (turn: Turn, yielded: boolean): Promise<void> {
    if (turn.closing) return
    turn.closing = true
    turn.ending = true
    if (this.#turn === turn) {
      clearInterval(this.#idle)
      this.#idle = undefined
    }
    try {
      await (await turn.store).close()
    } catch (err) {
      this.#log.warn({ err }, 'could not close the store at the end of a turn')
    } finally {
      if (yielded) this.#yielded = sleep(YIELD_MS)
      if (this.#turn === turn) this.#turn = undefined
      turn.end()
    }
  }

  async hold<T>(fn: () => Promise<T>): Promise<T> {
    return await this.#use(async () => await this.#inHold.run(true, fn))
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#idle)
    this.#idle = undefined
    try {
      const turn = this.#turn
      if (turn !== undefined) {
        // Calls in flight finish; the last one to end closes the turn.
        turn.ending = true
        if (this.#active === 0) await this.#end(turn, false)
        await turn.ended
      }
      if (this.#init.pool === undefined) await this.#pool?.close()
    } finally {
      this.#releaseUse()
    }
  }

  /**
   * A tree it can move in is packed between two turns (the walk, chunking and
   * hashing take no turn), in place, its entry lists kept in a staging dir that
   * recovery leaves alone; the second turn indexes and installs it. A tree it must
   * copy is committed in one turn.
   */
  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    let inPlace: boolean
    try {
      inPlace = opts.keepSource !== true && sameFilesystem(dir, `${this.dataDir}/staging`)
    } catch (err) {
      throw commitError(dir, err)
    }
    if (!inPlace) return await this.#use(async (s) => await s.commit(dir, opts))
    const work = await this.#use(async (s) => s.holdStaging())
    try {
      const spill = new ManifestSpill(`${work.dir}/manifest`)
      let packed: PackedTree
      try {
        opts.signal?.throwIfAborted()
        packed = await packCommit({ log: this.#log, workers: this.#workers, inlineMax: this.#init.inlineMax }, dir, opts, (b) => spill.add(b))
      } finally {
        spill.close()
      }
      return await this.#use(async (s) => await s.installPacked(dir, packed, spill.blocks()))
    } catch (err) {
      throw commitError(dir, err)
    } finally {
      work.release()
    }
  }

  async has (root: CID): Promise<boolean> {
    return await this.#use(async (s) => await s.has(root))
  }

  async getLayer (root: CID): Promise<LayerInfo | undefined> {
    return await this.#use(async (s) => await s.getLayer(root))
  }

  async checkLayer (root: CID, opts?: { signal?: AbortSignal }): Promise<LayerCheck> {
    return await this.#use(async (s) => await s.checkLayer(root, opts))
  }

  async listLayers (): Promise<LayerInfo[]> {
    return await this.#use(async (s) => await s.listLayers())
  }

  async removeLayer (root: CID): Promise<void> {
    await this.#use(async (s) => await s.removeLayer(root))
  }

  async getBlock (cid: CID, opts?: { signal?: AbortSignal }): Promise<Uint8Array> {
    return await this.#use(async (s) => await s.getBlock(cid, opts))
  }

  async hasBlock (cid: CID): Promise<boolean> {
    return await this.#use(async (s) => await s.hasBlock(cid))
  }

  async restore (root: CID, source: BlockSource, opts?: RestoreOptions): Promise<LayerInfo> {
    return await this.#use(async (s) => await s.restore(root, source, opts))
  }

  async putRecord (key: string, value: Uint8Array): Promise<void> {
    await this.#use(async (s) => await s.putRecord(key, value))
  }

  async getRecord (key: string): Promise<Uint8Array | undefined> {
    return await this.#use(async (s) => await s.getRecord(key))
  }

  async unpack (root: CID, dest: string, opts?: MaterializeOptions): Promise<{ entries: number, bytes: number }> {
    return await this.#use(async (s) => await s.unpack(root, dest, opts))
  }

  /**
   * A turn per manifest block: a slow reader of a large layer does not keep other
   * processes waiting. A lease keeps another process's collection from removing
   * the layer in between.
   */
  async * entries (root: CID): AsyncGenerator<Entry, void, undefined> {
    const lease = takeLease(this.dataDir)
    try {
      lease.add(root.toString())
      // Each block in a turn of its own: readManifest asks for them one by one.
      yield * readManifest(root, async (cid) => await this.getBlock(cid))
    } finally {
      lease.release()
    }
  }

  touch (root: CID | string, at = Date.now()): void {
    this.#use(async (s) => { s.touch(root, at) }).catch((err: unknown) => this.#log.debug({ err, layer: root.toString() }, 'could not record a layer use'))
  }

  async gc (opts: GcOptions): Promise<GcReport> {
    return await this.#use(async (s) => await s.gc(opts))
  }

  async sweep (): Promise<{ blocks: number, manifestBlocks: number, used: number }> {
    return await this.#use(async (s) => await s.sweep())
  }

  async verifyLayer (root: CID | string, opts?: VerifyOptions): Promise<LayerVerification> {
    return await this.#use(async (s) => await s.verifyLayer(root, opts))
  }

  async markCorrupt (root: CID | string, why?: { path?: string, reason?: string }): Promise<void> {
    await this.#use(async (s) => await s.markCorrupt(root, why))
  }

  async layerRoots (): Promise<string[]> {
    return await this.#use(async (s) => await s.layerRoots())
  }
}
