import { existsSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { materialize, readManifest, BlockMismatchError, FsPool, cidString } from '@strata/chunker'
import type { ContentSource, Entry, MaterializeOptions } from '@strata/chunker'
import type { BlockSource, CommitOptions, GcOptions, GcReport, LayerCheck, LayerInfo, LayerVerification, RestoreOptions, Store, VerifyOptions } from './types.ts'
import type { Index } from './keys.ts'
import { K_OPEN, LAYER, RECORD } from './keys.ts'
import { layerInfo, layerRoots, readMeta } from './meta.ts'
import { LayerNotFoundError } from './errors.ts'
import { BlockIndex } from './block-index.ts'
import { checkLayer, markCorrupt, verifyLayer } from './check.ts'
import type { CheckDeps } from './check.ts'
import { Collector } from './collector.ts'
import { commitTree, installPacked, Installer } from './commit.ts'
import type { PackedTree } from './commit.ts'
import type { ManifestBlock } from './plan.ts'
import { Dirs } from './dirs.ts'
import { ManifestIndex } from './manifest.ts'
import type { Leftovers } from './manifest.ts'
import { recover, salvageRecords, sweep } from './recover.ts'
import type { RecoverDeps } from './recover.ts'
import { Removal } from './remove.ts'
import { restoreLayer } from './restore.ts'
import { RootLocks } from './root-locks.ts'
import { Uses } from './uses.ts'
import { IndexFlusher } from './index-flush.ts'

/** What the store offers beyond the shared interface, for the CLI and the runner on this machine. */
export interface LocalStore {
  /** Writes a committed layer into `dest` (absent or empty), copying from the local layer dir and verifying. */
  unpack(root: CID, dest: string, opts?: MaterializeOptions): Promise<{ entries: number, bytes: number }>
  /** The layer's entries, in manifest order. */
  entries(root: CID): AsyncGenerator<Entry, void, undefined>
  /** Records a use of the layer, for the collector's least-recently-used order (written at most once a minute). */
  touch(root: CID | string, at?: number): void
  /** Removes least recently used layers until the store fits `maxSize`; see doc/STORE.md. */
  gc(opts: GcOptions): Promise<GcReport>
  /** Deletes index keys that belong to no layer (open runs it after a crash). */
  sweep(): Promise<{ blocks: number, manifestBlocks: number, used: number }>
  /**
   * Re-reads a layer's dir against its manifest (content hashed, types, modes,
   * owners, nothing extra); marks it corrupt when it differs. A layer marked
   * before is reported as it was marked, not read again.
   */
  verifyLayer(root: CID | string, opts?: VerifyOptions): Promise<LayerVerification>
  /** Marks a layer corrupt: it is never offered again (a hit, a mount, a restore's source) and the next collection removes it. */
  markCorrupt(root: CID | string, why?: { path?: string, reason?: string }): Promise<void>
  /** Roots of every layer in the index, those marked corrupt included. */
  layerRoots(): Promise<string[]>
  /** Bytes the index's LevelDB holds in memory: its block cache and memtables. */
  indexMemory?(): number
}

export interface LayerStoreInit {
  dataDir: string
  db: Index
  log: Logger
  /** Releases the data dir's lock. */
  release: () => void
  inlineMax: number | undefined
  touchEveryMs: number
  pool: FsPool | undefined
  /** File workers that outlive this store (a shared store's, kept across its turns); the store does not end them. */
  workers?: (() => FsPool) | undefined
  verity: boolean
  /** Write the index's memtable out this often (`IndexFlusher`); undefined: only when LevelDB's write buffer fills. */
  indexFlushEveryMs?: number | undefined
}

/**
 * The store: wires its parts (open.ts opens it), each given the few things it
 * needs. Visibility lives here: a layer counts when its key exists, it is not
 * marked corrupt, and its dir exists.
 */
export class LayerStore implements Store, LocalStore {
  readonly dataDir: string
  readonly #db: Index
  readonly #log: Logger
  readonly #release: () => void
  readonly #dirs: Dirs
  readonly #leftovers: Leftovers = { sweepAtNextOpen: false }
  readonly #uses: Uses
  readonly #locks: RootLocks
  readonly #manifests: ManifestIndex
  readonly #blocks: BlockIndex
  readonly #removal: Removal
  readonly #installer: Installer
  readonly #collector: Collector
  readonly #check: CheckDeps
  readonly #recover: RecoverDeps
  readonly #inlineMax: number | undefined
  #pool: FsPool | undefined
  readonly #poolGiven: boolean
  readonly #sharedWorkers: (() => FsPool) | undefined
  #closed = false
  readonly #flusher: IndexFlusher | undefined

  constructor (init: LayerStoreInit) {
    const { dataDir, db, log } = init
    this.dataDir = dataDir
    this.#db = db
    this.#log = log
    this.#release = init.release
    this.#inlineMax = init.inlineMax
    this.#pool = init.pool
    this.#poolGiven = init.pool !== undefined
    this.#sharedWorkers = init.workers
    this.#dirs = new Dirs(dataDir)
    this.#uses = new Uses(db, log, init.touchEveryMs)
    this.#locks = new RootLocks(dataDir)
    this.#manifests = new ManifestIndex(db, log, this.#leftovers)
    const layerDir = (root: string): string => this.#dirs.layer(root)
    this.#blocks = new BlockIndex({
      db,
      layerDir,
      touch: (root) => this.#uses.touch(root),
      markCorrupt: async (root, why) => await markCorrupt({ db, log }, root, why)
    })
    this.#removal = new Removal({ db, log, dirs: this.#dirs, manifests: this.#manifests, leftovers: this.#leftovers, locks: this.#locks, uses: this.#uses })
    this.#installer = new Installer({
      db,
      log,
      dirs: this.#dirs,
      manifests: this.#manifests,
      leftovers: this.#leftovers,
      locks: this.#locks,
      removal: this.#removal,
      blocks: this.#blocks,
      uses: this.#uses,
      getLayer: async (root) => await this.getLayer(root),
      verity: init.verity
    })
    this.#collector = new Collector({ db, log, dataDir, uses: this.#uses, removal: this.#removal, locks: this.#locks, listLayers: async () => await this.listLayers() })
    this.#flusher = init.indexFlushEveryMs !== undefined ? new IndexFlusher(db, log, init.indexFlushEveryMs) : undefined
    this.#flusher?.start()
    this.#check = { db, log, layerDir, entries: (root) => this.entries(root) }
    this.#recover = {
      db,
      log,
      dirs: this.#dirs,
      manifests: this.#manifests,
      leftovers: this.#leftovers,
      installer: this.#installer,
      removal: this.#removal,
      uses: this.#uses,
      workers: () => this.#workers,
      inlineMax: this.#inlineMax
    }
  }

  /** Worker threads for file I/O, started on first use and kept until close(). */
  get #workers (): FsPool {
    if (this.#pool === undefined && this.#sharedWorkers !== undefined) return this.#sharedWorkers()
    this.#pool ??= new FsPool()
    return this.#pool
  }

  layerDir (root: string): string {
    return this.#dirs.layer(root)
  }

  /** Makes the store consistent after a crash (recover.ts); open.ts calls it. */
  async recover (rebuild = false): Promise<void> {
    await recover(this.#recover, rebuild)
  }

  /** Copies what records a quarantined index still holds into this one (recover.ts). */
  async salvageRecords (quarantined: string): Promise<number> {
    return await salvageRecords(this.#recover, quarantined)
  }

  async sweep (): Promise<{ blocks: number, manifestBlocks: number, used: number }> {
    return await sweep(this.#recover)
  }

  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    return await commitTree({ log: this.#log, dirs: this.#dirs, manifests: this.#manifests, installer: this.#installer, workers: () => this.#workers, inlineMax: this.#inlineMax }, dir, opts)
  }

  /** A staging dir for work done while the store is closed; recovery leaves it alone until `release()` (a shared store's commit). */
  holdStaging (): { dir: string, release: () => void } {
    return this.#dirs.held()
  }

  /** Installs a tree packed in place (commit.ts packCommit) while the store was closed. */
  async installPacked (src: string, packed: PackedTree, lists: Iterable<ManifestBlock>): Promise<LayerInfo> {
    return await installPacked({ log: this.#log, dirs: this.#dirs, manifests: this.#manifests, installer: this.#installer, workers: () => this.#workers, inlineMax: this.#inlineMax }, src, packed, lists)
  }

  async restore (root: CID, source: BlockSource, opts: RestoreOptions = {}): Promise<LayerInfo> {
    const have = await this.getLayer(root)
    if (have !== undefined) {
      this.touch(root)
      return have
    }
    return await restoreLayer({ dirs: this.#dirs, manifests: this.#manifests, installer: this.#installer, blocks: this.#blocks, workers: () => this.#workers }, root, source, opts)
  }

  async unpack (root: CID, dest: string, opts: MaterializeOptions = {}): Promise<{ entries: number, bytes: number }> {
    const info = await this.getLayer(root)
    if (info === undefined) throw new LayerNotFoundError(root.toString())
    const source: ContentSource = {
      getBlock: (cid, o) => this.getBlock(cid, o),
      localFile: (e) => `${info.path}/${e.path}`
    }
    // The manifest of a layer from a peer still says what the peer sent: its policy applies again.
    const untrusted = opts.untrusted === true || (await readMeta(this.#db, root.toString()))?.untrusted === true
    try {
      return await materialize(root, dest, source, { pool: this.#workers, ...opts, untrusted })
    } catch (err) {
      const bad = blockMismatch(err)
      if (bad !== undefined) await this.markCorrupt(root, { reason: 'block', path: bad.path })
      throw err
    }
  }

  async * entries (root: CID): AsyncGenerator<Entry, void, undefined> {
    yield * readManifest(root, async (cid) => await this.getBlock(cid))
  }

  async has (root: CID): Promise<boolean> {
    return (await this.getLayer(root)) !== undefined
  }

  async getLayer (root: CID): Promise<LayerInfo | undefined> {
    const key = root.toString()
    const meta = await readMeta(this.#db, key)
    if (meta === undefined || meta.corrupt === true) return undefined
    const path = this.#dirs.layer(key)
    if (!existsSync(path)) return undefined
    return layerInfo(root, path, meta)
  }

  async listLayers (): Promise<LayerInfo[]> {
    const out: LayerInfo[] = []
    for await (const key of this.#db.keys(LAYER.range)) {
      const info = await this.getLayer(CID.parse(LAYER.id(key)))
      if (info !== undefined) out.push(info)
    }
    return out
  }

  async layerRoots (): Promise<string[]> {
    return await layerRoots(this.#db)
  }

  indexMemory (): number {
    return this.#db.status === 'open' ? Number(this.#db.getProperty('leveldb.approximate-memory-usage')) : 0
  }

  async removeLayer (root: CID): Promise<void> {
    const key = root.toString()
    await this.#locks.exclusive(key, async () => await this.#removal.discard(key))
  }

  async hasBlock (cid: CID): Promise<boolean> {
    return await this.#blocks.has(cid)
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    return await this.#blocks.get(cid, opts)
  }

  async checkLayer (root: CID, opts: { signal?: AbortSignal } = {}): Promise<LayerCheck> {
    return await checkLayer(this.#check, root, opts)
  }

  async verifyLayer (root: CID | string, opts: VerifyOptions = {}): Promise<LayerVerification> {
    return await verifyLayer(this.#check, root, opts)
  }

  async markCorrupt (root: CID | string, why: { path?: string, reason?: string } = {}): Promise<void> {
    await markCorrupt(this.#check, root.toString(), why)
  }

  async putRecord (key: string, value: Uint8Array): Promise<void> {
    await this.#db.put(RECORD.key(key), value)
  }

  async getRecord (key: string): Promise<Uint8Array | undefined> {
    return await this.#db.get(RECORD.key(key))
  }

  /** Records a use of the layer (a hit, a mount, a block served) for the collector's least-recently-used order. */
  touch (root: CID | string, at = Date.now()): void {
    this.#uses.touch(typeof root === 'string' ? root : cidString(root), at)
  }

  async gc (opts: GcOptions): Promise<GcReport> {
    return await this.#collector.gc(opts)
  }

  /** Closes the index only (the lock stays), for openStore to retry on a rebuilt index. */
  async closeIndex (): Promise<void> {
    await this.#flusher?.stop()
    if (!this.#poolGiven) {
      await this.#pool?.close()
      this.#pool = undefined
    }
    await this.#db.close()
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    try {
      await this.#collector.idle()
      await this.#uses.settle()
      await this.#flusher?.stop()
      if (!this.#poolGiven) await this.#pool?.close()
      if (!this.#leftovers.sweepAtNextOpen) await this.#db.del(K_OPEN).catch((err: unknown) => this.#log.warn({ err }, 'could not mark the store closed'))
      await this.#db.close()
    } finally {
      this.#release()
    }
  }
}

/** The BlockMismatchError behind `err` (materialize wraps what its workers throw), if any. */
function blockMismatch (err: unknown): { path?: string } | undefined {
  for (let e = err as { code?: unknown, cause?: unknown, path?: unknown } | undefined, depth = 0; e !== undefined && e !== null && depth < 4; e = e.cause as typeof e, depth++) {
    if (e instanceof BlockMismatchError || e.code === 'ERR_BLOCK_MISMATCH') return typeof e.path === 'string' ? { path: e.path } : {}
  }
  return undefined
}
