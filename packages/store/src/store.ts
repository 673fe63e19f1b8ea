import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import { resolve } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { cidString, decodeEntryList, decodeRoot, isStrataCid, materialize, packTree, verifyBlock, BlockMismatchError, DAG_CBOR, EntryChecker, FsPool, LIMITS, removeTree } from '@strata/chunker'
import type { ContentSource, Entry, MaterializeOptions } from '@strata/chunker'
import type { BlockSource, CommitOptions, GcKept, GcOptions, GcReport, LayerCheck, LayerInfo, LayerVerification, RestoreOptions, Store, StoreInit, VerifyOptions } from './types.ts'
import { BlockCorruptError, BlockNotFoundError, CommitError, IndexCorruptError, LayerNotFoundError, StoreError, StoreVersionError } from './errors.ts'
import { decodeFingerprint, encodeFingerprint, fingerprint } from './fingerprint.ts'
import { sealTree } from './seal.ts'
import { verifyTree } from './verify.ts'
import { failpoint } from './failpoint.ts'
import { Dropped } from './dropped.ts'
import { removeEnded, scanLeases } from './lease.ts'
import type { LeaseScan } from './lease.ts'
import { acquireLock } from './lock.ts'


const execFileP = promisify(execFile)

/** Bumped whenever the index layout changes; a store of another version is refused. */
export const STORE_FORMAT = '1'

// Index keys. Block locations are keyed by block then layer, so a block held by
// several layers has several locations and removing a layer removes only its own.
const K_VERSION = 'meta:version'
const kLayer = (root: string): string => `layer:${root}`
const kManifestBlock = (cid: string): string => `mblock:${cid}`
const kBlock = (cid: string, layer: string): string => `block:${cid}:${layer}`
const kRecord = (key: string): string => `record:${key}`
const kPending = (root: string): string => `pending:${root}`
/** Written (with the layer key deleted) before a layer's dir and index entries go; open() finishes the removal. */
const kRemoving = (root: string): string => `removing:${root}`
/** Last use of a layer, ms since the epoch as decimal text; absent means its `created`. */
const kUsed = (root: string): string => `used:${root}`
/** The stat fingerprint of a committed layer dir, checked on every hit (fingerprint.ts). */
const kFingerprint = (root: string): string => `fprint:${root}`
/** Present while a process has the store open: found at open, the last one died, and orphans are swept. */
const K_OPEN = 'meta:open'
/** By default a layer's last use is written at most this often (serving blocks touches it on every read). */
const TOUCH_EVERY_MS = 60_000
/** Quarantined indexes kept for inspection; older ones are deleted. */
const KEEP_QUARANTINED = 3
const BATCH = 5000
/** Bytes of manifest blocks written to the index per batch. */
const MANIFEST_BATCH_BYTES = 4 * 1024 * 1024
/** Block lookups answered by one index read, and the most layers a read spans as exact keys. */
const LOOKUP_BATCH = 1024
const LOOKUP_MAX_LAYERS = 32
/** Blocks a restore asks its source for at once. */
const RESTORE_CONCURRENCY = 512
/**
 * How far a restore's network runs ahead of its writes: block bytes, and windows of
 * entries (at most an entry list each), so that the transfer keeps going through
 * stretches of small inline files, which only the disk slows.
 */
const RESTORE_PREFETCH_BYTES = 96 * 1024 * 1024
const RESTORE_WINDOWS_AHEAD = 32

interface LayerMeta {
  size: number
  entries: number
  blocks: number
  created: number
  /** Found not to be what its manifest says (a block, a hit's stat check, a verify): never offered again. */
  corrupt?: boolean
  /** Which path, and what was wrong with it, when that is known. */
  corruptPath?: string
  corruptReason?: string
  /** Restored from a peer under the peer policy. */
  untrusted?: boolean
}

/** Written before a layer dir is renamed into place; lets recover() finish the index. */
/** Where one content block of a layer lives: its CID's text, the file, the range. */
interface Located {
  cid: string
  path: string
  offset: number
  length: number
}

interface PendingMeta {
  untrusted?: boolean
}

interface ManifestBlock {
  cid: CID
  bytes: Uint8Array
}

/** What indexing a layer writes, worked out (and the manifest checked) before anything moves. */
interface IndexPlan {
  /** Kept as the pack reports them; keys and values are made a batch at a time (85k keys at once cost ~30 MB). */
  locations: Located[]
  entries: number
  size: number
  blocks: number
}

function planIndex (root: string, blocks: ManifestBlock[]): IndexPlan {
  const decoded = decodeRoot(blocks[0]!.bytes)
  if (blocks.length !== decoded.entries.length + 1) throw new CommitError(`manifest of ${root} is incomplete`)
  const checker = new EntryChecker(decoded.count, decoded.size)
  const locations: Located[] = []
  const distinct = new Set<string>()
  decoded.entries.forEach((cid, i) => {
    const list = blocks[i + 1]!
    if (!list.cid.equals(cid)) throw new CommitError(`manifest of ${root} has its blocks out of order`)
    const entries = decodeEntryList(list.bytes)
    for (const e of entries) checker.check(e)
    locate(entries, locations, distinct)
  })
  checker.end()
  return { locations, entries: decoded.count, size: decoded.size, blocks: distinct.size }
}

/** Adds where each content block of `entries` lives to `locations`, and its CID to `distinct`. */
function locate (entries: readonly Entry[], locations: Located[], distinct: Set<string>): void {
  for (const e of entries) {
    if (e.type !== 'file' || e.chunks === undefined) continue
    let offset = 0
    for (const c of e.chunks) {
      const key = cidString(c.cid)
      distinct.add(key)
      locations.push({ cid: key, path: e.path, offset, length: c.length })
      offset += c.length
    }
  }
}

interface Location {
  layer: string
  path: string
  offset: number
  length: number
}

export interface OpenStoreInit extends StoreInit {
  logger?: Logger
  /** Files up to this size are packed into the manifest. Default: the format's DEFAULT_INLINE_MAX. */
  inlineMax?: number
  /** A layer's last use is written at most this often. Default 60 000 ms. */
  touchEveryMs?: number
  /**
   * Bytes the index's LevelDB keeps in memory before it writes a table (its
   * `writeBufferSize`). Default LevelDB's own, 4 MiB. A manifest's blocks go to the
   * index, ~50 MB of them for a large tree; with a larger buffer they make fewer
   * level-0 tables and so fewer compactions rewriting them. The daemon, which
   * restores layers from peers while it serves others, sets 16 MiB (doc/DECISIONS.md).
   */
  indexWriteBufferBytes?: number
  /**
   * File workers already started, for the store to use instead of starting its own
   * when it first needs them. They stay the caller's: the store does not end them.
   * `strata pack` and `unpack` start theirs before they load the rest of the CLI
   * (doc/DECISIONS.md, "Pack and unpack start their file workers first").
   */
  pool?: FsPool
  /**
   * Turn fs-verity on for the files of every committed layer where the filesystem
   * offers it (ext4 with the `verity` feature): the kernel then refuses writes to
   * them and checks every read. Where it does not, the hit check's stat
   * fingerprint alone guards them. Default true (doc/decisions/layer-verification.md).
   */
  verity?: boolean
}

/** LevelDB takes any size; below 64 KiB a table is written every few puts. */
const MIN_INDEX_WRITE_BUFFER = 64 * 1024

/**
 * Opens (creating if needed) the store under `dataDir`. An index that cannot be
 * opened or read, or that contradicts itself, is moved aside (kept for
 * inspection, its path logged) and rebuilt from the layer dirs.
 */
export async function openStore (init: OpenStoreInit): Promise<Store & LocalStore> {
  const wb = init.indexWriteBufferBytes
  if (wb !== undefined && !(Number.isSafeInteger(wb) && wb >= MIN_INDEX_WRITE_BUFFER)) {
    throw new TypeError(`indexWriteBufferBytes must be an integer of at least ${MIN_INDEX_WRITE_BUFFER} bytes, got ${wb}`)
  }
  const log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'store' })
  // Layer paths handed out (and mounted as lower dirs) must not depend on the cwd.
  const dataDir = resolve(init.dataDir)
  mkdirSync(`${dataDir}/layers`, { recursive: true })
  mkdirSync(`${dataDir}/staging`, { recursive: true })
  const release = await acquireLock(dataDir, { wait: init.wait ?? true, signal: init.signal, log })
  try {
    try {
      return await openIndex(dataDir, log, release, init)
    } catch (err) {
      if (!isCorruption(err)) throw err
      const aside = quarantine(dataDir)
      log.error({ err, quarantined: aside }, 'the store index is corrupt: moved it aside and rebuilding it from the layer dirs')
      const store = await openIndex(dataDir, log, release, init)
      await store.salvageRecords(aside)
      return store
    }
  } catch (err) {
    release()
    throw err
  }
}

async function openIndex (dataDir: string, log: Logger, release: () => void, init: OpenStoreInit): Promise<LayerStore> {
  // Opened without CURRENT, LevelDB would start a new index over the old files and delete them.
  const files = existsSync(`${dataDir}/index`) ? readdirSync(`${dataDir}/index`) : []
  if (files.some((f) => /\.(ldb|sst|log)$/.test(f)) && !files.includes('CURRENT')) throw new IndexCorruptError('the index has table files but no CURRENT file')
  const db = new ClassicLevel<string, Uint8Array>(`${dataDir}/index`, { keyEncoding: 'utf8', valueEncoding: 'view' })
  try {
    await db.open(init.indexWriteBufferBytes !== undefined ? { writeBufferSize: init.indexWriteBufferBytes } : {})
  } catch (err) {
    if (manifestMissing(`${dataDir}/index`)) throw new IndexCorruptError('the index names a MANIFEST file that is not there', { cause: err })
    throw err
  }
  const store = new LayerStore(dataDir, db, log, release, init.inlineMax, init.touchEveryMs ?? TOUCH_EVERY_MS, init.pool, init.verity ?? true)
  try {
    const fresh = await store.checkVersion()
    await store.recover(fresh && readdirSync(`${dataDir}/layers`).length > 0)
  } catch (err) {
    await store.closeIndex()
    throw err
  }
  return store
}

/** LevelDB reports a CURRENT file naming a missing MANIFEST as an I/O error; it is damage all the same. */
function manifestMissing (index: string): boolean {
  try {
    const name = readFileSync(`${index}/CURRENT`, 'utf8').trim()
    return /^MANIFEST-\d+$/.test(name) && !existsSync(`${index}/${name}`)
  } catch {
    return false
  }
}

function isCorruption (err: unknown): boolean {
  for (let e = err as { code?: unknown, cause?: unknown } | undefined, depth = 0; e !== undefined && e !== null && depth < 4; e = e.cause as typeof e, depth++) {
    if (e.code === 'LEVEL_CORRUPTION' || e.code === 'ERR_INDEX_CORRUPT') return true
  }
  return false
}

/** Moves the index aside as `index.corrupt-<time>`, keeping the newest few, and returns where it went. */
function quarantine (dataDir: string): string {
  const aside = `${dataDir}/index.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`
  renameSync(`${dataDir}/index`, aside)
  const old = readdirSync(dataDir).filter((n) => n.startsWith('index.corrupt-')).sort()
  for (const n of old.slice(0, Math.max(0, old.length - KEEP_QUARANTINED))) rmSync(`${dataDir}/${n}`, { recursive: true, force: true })
  return aside
}

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
}

class LayerStore implements Store, LocalStore {
  readonly dataDir: string
  readonly #db: ClassicLevel<string, Uint8Array>
  readonly #log: Logger
  readonly #release: () => void
  #closed = false
  #sweepAtNextOpen = false
  /**
   * Commits whose manifest blocks are being written ahead of their pending
   * marker: while there are any, no manifest block is deleted (a removal or a
   * sweep could take one that a commit shares), and the next open sweeps instead.
   */
  #manifestsInFlight = 0
  #pool: FsPool | undefined
  readonly #poolGiven: boolean
  /** Last use of each layer as last written (or about to be), so that a use is written at most once a minute. */
  readonly #touched = new Map<string, number>()
  readonly #writes = new Set<Promise<void>>()
  #collecting: Promise<unknown> = Promise.resolve()
  readonly #rootLocks = new Map<string, Promise<void>>()
  readonly #inlineMax: number | undefined

  readonly #touchEveryMs: number
  /** Whether layer files get fs-verity: undefined until the first commit finds out whether the filesystem offers it. */
  #verity: boolean | undefined

  constructor (dataDir: string, db: ClassicLevel<string, Uint8Array>, log: Logger, release: () => void, inlineMax: number | undefined, touchEveryMs: number, pool: FsPool | undefined, verity: boolean) {
    this.dataDir = dataDir
    this.#verity = verity ? undefined : false
    this.#pool = pool
    this.#poolGiven = pool !== undefined
    this.#touchEveryMs = touchEveryMs
    this.#inlineMax = inlineMax
    this.#db = db
    this.#log = log
    this.#release = release
  }

  /**
   * Refuses another format version. Returns whether the index is new; an index
   * with entries but no version key is corrupt (a lost CURRENT file opens as empty
   * only after LevelDB made a new one, so "new" is also checked against the layer dirs).
   */
  async checkVersion (): Promise<boolean> {
    const found = await this.#db.get(K_VERSION)
    if (found === undefined) {
      for await (const _ of this.#db.keys({ limit: 1 })) throw new IndexCorruptError(`the index of ${this.dataDir} has entries but no format version`)
      await this.#db.put(K_VERSION, Buffer.from(STORE_FORMAT))
      return true
    }
    const text = Buffer.from(found).toString()
    if (text !== STORE_FORMAT) throw new StoreVersionError(this.dataDir, text, STORE_FORMAT)
    return false
  }

  /**
   * Makes the store consistent after a crash: staging is emptied; removals that
   * were marked are finished; a layer dir the index does not know is indexed from
   * the manifest its commit stored first (the crash fell between the rename and the
   * index write) once its content verifies, or else removed; index entries whose
   * dir is gone are dropped. After a process died with the store open, orphan
   * index keys are swept. With `rebuild` (the index is new but layer dirs exist),
   * every layer dir is re-packed and indexed when it still packs to its name.
   */
  async recover (rebuild = false): Promise<void> {
    for (const name of readdirSync(`${this.dataDir}/staging`)) {
      try {
        removeTree(`${this.dataDir}/staging/${name}`)
      } catch (err) {
        this.#log.warn({ err, path: name }, 'cannot remove a staging dir; will try again at the next open')
      }
    }
    if (rebuild) {
      await this.#rebuild()
      await this.#db.put(K_OPEN, Buffer.from(String(process.pid)))
      return
    }
    const dirty = (await this.#db.get(K_OPEN)) !== undefined
    for await (const key of this.#db.keys({ gte: 'removing:', lt: 'removing;' })) {
      const root = key.slice('removing:'.length)
      this.#log.warn({ layer: root }, 'finishing the removal of a layer interrupted by a crash')
      await this.#finishRemoval(root)
    }
    const dirs = new Set(readdirSync(`${this.dataDir}/layers`))
    const known = new Set<string>()
    for await (const [key, value] of this.#db.iterator({ gte: 'layer:', lt: 'layer;' })) {
      try {
        JSON.parse(Buffer.from(value).toString())
      } catch (err) {
        throw new IndexCorruptError(`the index entry ${key} is not JSON`, { cause: err })
      }
      known.add(key.slice('layer:'.length))
    }
    const pending = new Map<string, PendingMeta>()
    for await (const [key, value] of this.#db.iterator({ gte: 'pending:', lt: 'pending;' })) {
      pending.set(key.slice('pending:'.length), JSON.parse(Buffer.from(value).toString()) as PendingMeta)
    }
    for (const root of known) {
      if (!dirs.has(root)) {
        this.#log.warn({ layer: root }, 'layer dir missing: dropping it from the index')
        await this.#dropIndex(root)
      }
    }
    for (const name of dirs) {
      if (known.has(name)) continue
      const marker = pending.get(name)
      if (marker !== undefined) {
        try {
          const plan = planIndex(name, await this.#storedManifest(name))
          this.#verifyContent(name, plan)
          await this.#writeIndex(name, plan, marker, 'commit')
          this.#log.info({ layer: name }, 'indexed a layer committed just before a crash')
          continue
        } catch (err) {
          this.#log.warn({ err, layer: name }, 'an interrupted commit left a layer dir that does not verify')
        }
      }
      this.#log.warn({ layer: name }, 'removing a layer dir that is not a complete layer')
      try {
        this.#hide(name)
        dirs.delete(name)
      } catch (err) {
        this.#log.warn({ err, layer: name }, 'cannot remove an incomplete layer dir')
      }
    }
    for (const name of pending.keys()) {
      if (!dirs.has(name) && !known.has(name)) await this.#db.del(kPending(name))
    }
    if (dirty) await this.sweep()
    await this.#harvestLeases()
    await this.#removeAside()
    await this.#db.put(K_OPEN, Buffer.from(String(process.pid)))
  }

  /**
   * Deletes index keys that belong to no layer: block locations and last-use
   * entries of layers that are gone, manifest blocks no layer links to. Runs at
   * open after a process died with the store open (a crash can leave them between
   * the writes of a commit or a removal); it reads every such key once.
   */
  async sweep (): Promise<{ blocks: number, manifestBlocks: number, used: number }> {
    const live = new Set<string>()
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) live.add(key.slice('layer:'.length))
    for await (const key of this.#db.keys({ gte: 'pending:', lt: 'pending;' })) live.add(key.slice('pending:'.length))
    const linked = await this.#linkedManifestBlocks(live)
    const counts = { blocks: 0, manifestBlocks: 0, used: 0 }
    let batch = this.#db.batch()
    const flush = async (): Promise<void> => {
      if (batch.length < BATCH) return
      await batch.write()
      batch = this.#db.batch()
    }
    for await (const key of this.#db.keys({ gte: 'block:', lt: 'block;' })) {
      if (live.has(key.slice(key.lastIndexOf(':') + 1))) continue
      batch.del(key)
      counts.blocks++
      await flush()
    }
    for await (const key of this.#db.keys({ gte: 'mblock:', lt: 'mblock;' })) {
      if (this.#manifestsInFlight > 0) {
        this.#sweepAtNextOpen = true
        break
      }
      if (linked.has(key.slice('mblock:'.length))) continue
      batch.del(key)
      counts.manifestBlocks++
      await flush()
    }
    for await (const key of this.#db.keys({ gte: 'used:', lt: 'used;' })) {
      if (live.has(key.slice('used:'.length))) continue
      batch.del(key)
      counts.used++
      await flush()
    }
    for await (const key of this.#db.keys({ gte: 'fprint:', lt: 'fprint;' })) {
      if (live.has(key.slice('fprint:'.length))) continue
      batch.del(key)
      counts.used++
      await flush()
    }
    await batch.write()
    if (counts.blocks + counts.manifestBlocks + counts.used > 0) this.#log.warn(counts, 'swept index keys that belonged to no layer')
    return counts
  }

  /** Manifest block CIDs (roots and entry lists) the layers in `roots` link to. */
  async #linkedManifestBlocks (roots: Iterable<string>): Promise<Set<string>> {
    const linked = new Set<string>()
    for (const root of roots) {
      const bytes = await this.#db.get(kManifestBlock(root))
      if (bytes === undefined) continue
      linked.add(root)
      try {
        for (const c of decodeRoot(bytes).entries) linked.add(c.toString())
      } catch (err) {
        this.#log.warn({ err, layer: root }, 'a stored manifest root does not decode')
      }
    }
    return linked
  }

  /** Reads every content block of a layer dir at its planned location and checks its hash. */
  #verifyContent (root: string, plan: IndexPlan): void {
    for (const loc of plan.locations) {
      const bytes = readRange(`${this.layerDir(root)}/${loc.path}`, loc.offset, loc.length)
      verifyBlock(CID.parse(loc.cid), bytes)
    }
  }

  /**
   * Indexes the layer dirs from scratch: a dir that packs to its own name is a
   * layer (its origin is no longer known, so the peer policy applies to it from
   * now on); any other is removed.
   */
  async #rebuild (): Promise<void> {
    let kept = 0
    let dropped = 0
    for (const name of readdirSync(`${this.dataDir}/layers`)) {
      try {
        const found: Located[] = []
        const packed = await packTree(this.layerDir(name), {
          pool: this.#workers,
          ...(this.#inlineMax !== undefined ? { inlineMax: this.#inlineMax } : {}),
          onBlock: (b) => found.push(b)
        })
        if (packed.root.toString() !== name) throw new CommitError(`its content packs to ${packed.root.toString()}`)
        const plan: IndexPlan = {
          locations: found,
          entries: packed.count,
          size: packed.size,
          blocks: packed.contentBlocks
        }
        const lists = this.#manifestStream()
        let indexed = false
        try {
          for (const b of packed.blocks) lists.add(b)
          await lists.flush()
          await this.#writeIndex(name, plan, { untrusted: true }, 'commit')
          indexed = true
        } finally {
          await lists.end(indexed)
        }
        kept++
      } catch (err) {
        dropped++
        this.#log.warn({ err, layer: name }, 'dropping a layer dir that does not verify while rebuilding the index')
        try {
          this.#hide(name)
        } catch (e) {
          this.#log.warn({ err: e, layer: name }, 'cannot remove a layer dir')
        }
      }
    }
    this.#log.warn({ kept, dropped }, 'rebuilt the index from the layer dirs')
  }

  /**
   * Copies the records (signed, checked by whoever reads them) that LevelDB's
   * repair can still find in a quarantined index, working on a copy so that the
   * quarantined files stay as they were found. Best effort: what cannot be read is lost.
   */
  async salvageRecords (quarantined: string): Promise<number> {
    const copy = `${this.#stagingDir()}/index`
    let n = 0
    try {
      await execFileP('cp', ['-a', '--', quarantined, copy])
      await ClassicLevel.repair(copy)
      const old = new ClassicLevel<string, Uint8Array>(copy, { keyEncoding: 'utf8', valueEncoding: 'view', createIfMissing: false })
      await old.open()
      try {
        let batch = this.#db.batch()
        for await (const [key, value] of old.iterator({ gte: 'record:', lt: 'record;' })) {
          batch.put(key, value)
          n++
          if (batch.length >= BATCH) {
            await batch.write()
            batch = this.#db.batch()
          }
        }
        await batch.write()
      } finally {
        await old.close()
      }
      this.#log.warn({ records: n, from: quarantined }, 'salvaged records from the quarantined index')
    } catch (err) {
      this.#log.warn({ err, records: n, from: quarantined }, 'could not salvage the records of the quarantined index')
    } finally {
      removeTree(copy.slice(0, -'/index'.length))
    }
    return n
  }

  /**
   * Writes the manifest blocks given to `add` to the index a few MiB a batch (one
   * batch of a whole manifest, tens of MiB with inline files, would be copied whole
   * into LevelDB's write batch and memtable), one batch at a time, while the caller
   * goes on. `flush()` writes what is left and reports the first failure. Until
   * `end(linked)`, called once a key links the blocks to a layer (a pending marker
   * or a layer key) or once that failed, no manifest block is deleted; blocks left
   * unlinked are swept at the next open.
   */
  #manifestStream (): { add: (block: ManifestBlock) => void, flush: () => Promise<void>, end: (linked: boolean) => Promise<void> } {
    this.#manifestsInFlight++
    let batch = this.#db.batch()
    let bytes = 0
    let failed: unknown
    let writing: Promise<void> = Promise.resolve()
    let wrote = false
    const write = (): void => {
      wrote = true
      const full = batch
      batch = this.#db.batch()
      bytes = 0
      writing = writing.then(async () => { if (failed === undefined) await full.write() }).catch((err: unknown) => { failed ??= err })
    }
    let ended = false
    return {
      add: (block) => {
        batch.put(kManifestBlock(block.cid.toString()), block.bytes)
        bytes += block.bytes.length
        if (bytes >= MANIFEST_BATCH_BYTES) write()
      },
      flush: async () => {
        if (batch.length > 0) write()
        await writing
        if (failed !== undefined) throw failed
      },
      end: async (linked) => {
        if (ended) return
        ended = true
        await writing
        if (batch.length > 0) await batch.close()
        this.#manifestsInFlight--
        if (!linked && wrote) this.#sweepAtNextOpen = true
      }
    }
  }

  /** Moves a layer dir that must go, but that a live lease may have mounted, to `aside/<root>.<random>`. */
  #setAside (root: string): void {
    mkdirSync(`${this.dataDir}/aside`, { recursive: true })
    const to = `${this.dataDir}/aside/${root}.${randomBytes(4).toString('hex')}`
    renameSync(this.layerDir(root), to)
    this.#log.warn({ layer: root, path: to }, 'a corrupt layer is leased: its dir is set aside until the lease ends')
  }

  /** Deletes the set-aside dirs whose root no live lease holds any more. */
  async #removeAside (): Promise<number> {
    let names: string[]
    try {
      names = readdirSync(`${this.dataDir}/aside`)
    } catch {
      return 0
    }
    if (names.length === 0) return 0
    const held = scanLeases(this.dataDir).held
    let n = 0
    for (const name of names) {
      if (held.has(name.slice(0, name.lastIndexOf('.')))) continue
      const moved = this.#stagingDir()
      renameSync(`${this.dataDir}/aside/${name}`, `${moved}/removed`)
      await removeTreeAsync(moved)
      n++
    }
    return n
  }

  /** Takes a layer dir out of `layers/` and deletes it. */
  #hide (root: string): void {
    const dir = this.layerDir(root)
    if (!existsSync(dir)) return
    const moved = this.#stagingDir()
    renameSync(dir, `${moved}/removed`)
    removeTree(moved)
  }

  async #storedManifest (root: string): Promise<ManifestBlock[]> {
    const rootBytes = await this.#db.get(kManifestBlock(root))
    if (rootBytes === undefined) throw new BlockNotFoundError(root)
    const blocks: ManifestBlock[] = [{ cid: CID.parse(root), bytes: rootBytes }]
    for (const cid of decodeRoot(rootBytes).entries) {
      const bytes = await this.#db.get(kManifestBlock(cid.toString()))
      if (bytes === undefined) throw new BlockNotFoundError(cid.toString())
      blocks.push({ cid, bytes })
    }
    return blocks
  }

  #stagingDir (): string {
    const dir = `${this.dataDir}/staging/${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
    mkdirSync(dir)
    return dir
  }

  /** Worker threads for file I/O, started on first use and kept until close(). */
  get #workers (): FsPool {
    this.#pool ??= new FsPool()
    return this.#pool
  }

  layerDir (root: string): string {
    return `${this.dataDir}/layers/${root}`
  }

  /** Runs `fn` alone for this root within this process: two commits or restores of one layer never race. */
  async #exclusive<T> (root: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#rootLocks.get(root) ?? Promise.resolve()
    const run = before.then(fn, fn)
    const tail = run.then(() => {}, () => {})
    this.#rootLocks.set(root, tail)
    try {
      return await run
    } finally {
      if (this.#rootLocks.get(root) === tail) this.#rootLocks.delete(root)
    }
  }

  /**
   * Moves a complete tree into the store as the layer `blocks` describe. The
   * manifest is checked first (a tree the format cannot carry is refused before
   * anything moves); its blocks and a pending marker are written before the
   * rename, which is the commit point; block locations and the layer key after.
   * When the index write fails (a full disk), the tree is moved back where it was.
   * A layer already in the store is kept and the new tree discarded.
   */
  async #install (op: 'commit' | 'restore', tree: string, blocks: ManifestBlock[], meta: PendingMeta, ownsTree: boolean, known?: IndexPlan): Promise<LayerInfo> {
    const root = blocks[0]!.cid.toString()
    const plan = known ?? planIndex(root, blocks)
    return await this.#exclusive(root, async () => {
      const existing = await this.getLayer(blocks[0]!.cid)
      if (existing !== undefined) {
        if (ownsTree) removeTree(tree)
        return existing
      }
      // Not indexed, or corrupt: whatever is there is not a layer anyone may use.
      // A run that still has it mounted keeps its files: the dir is set aside,
      // not deleted, until no lease holds its root.
      if (existsSync(this.layerDir(root)) && this.#leased(root).has(root)) this.#setAside(root)
      if (existsSync(this.layerDir(root)) || (await this.#meta(root)) !== undefined) await this.#discard(root)
      // Entry lists first (a commit's went while it walked), then the root with the
      // pending marker. Blocks written before a crash that leaves no marker are
      // swept at open.
      const lists = this.#manifestStream()
      let marked = false
      try {
        for (const b of blocks.slice(1)) lists.add(b)
        await lists.flush()
        if (op === 'commit') failpoint('commit:manifest-partial')
        const batch = this.#db.batch()
        batch.put(kManifestBlock(root), blocks[0]!.bytes)
        batch.put(kPending(root), Buffer.from(JSON.stringify(meta)))
        await batch.write()
        marked = true
      } finally {
        await lists.end(marked)
      }
      failpoint(`${op}:manifest-written`)
      renameSync(tree, this.layerDir(root))
      failpoint(`${op}:renamed`)
      try {
        await this.#writeIndex(root, plan, meta, op)
      } catch (err) {
        await this.#unrename(root, tree, plan)
        throw err
      }
      return (await this.getLayer(blocks[0]!.cid))!
    })
  }

  /** Undoes an install whose index write failed: the tree goes back, its keys go (or the next open sweeps them). */
  async #unrename (root: string, tree: string, plan: IndexPlan): Promise<void> {
    this.#sweepAtNextOpen = true
    try {
      renameSync(this.layerDir(root), tree)
    } catch (err) {
      this.#log.warn({ err, layer: root }, 'cannot move a layer whose index write failed back out of the store')
      return
    }
    try {
      for (let i = 0; i < plan.locations.length; i += BATCH) {
        const batch = this.#db.batch()
        for (const loc of plan.locations.slice(i, i + BATCH)) batch.del(kBlock(loc.cid, root))
        await batch.write()
      }
      await this.#db.del(kPending(root))
    } catch (err) {
      // Expected on a full disk, and repaired without help: the commit's own error is what the caller reports.
      this.#log.info({ err, layer: root }, 'cannot drop the index keys of a failed commit; the next open sweeps them')
    }
  }

  async #writeIndex (root: string, plan: IndexPlan, meta: PendingMeta, op: 'commit' | 'restore'): Promise<void> {
    for (let i = 0; i < plan.locations.length; i += BATCH) {
      const batch = this.#db.batch()
      for (const loc of plan.locations.slice(i, i + BATCH)) batch.put(kBlock(loc.cid, root), encodeLocation(loc.path, loc.offset, loc.length))
      await batch.write()
    }
    failpoint(`${op}:located`)
    if (this.#verity !== false) {
      const sealed = await sealTree(this.layerDir(root))
      if (this.#verity === undefined && sealed.supported !== undefined) {
        this.#verity = sealed.supported
        this.#log.info({ dataDir: this.dataDir, verity: sealed.supported }, sealed.supported ? 'layer files get fs-verity' : 'the filesystem has no fs-verity: layers are guarded by their stat fingerprint only')
      }
    }
    // Taken once the dir is in place (its rename moved the root's ctime) and before the layer is visible.
    const print = await fingerprint(this.layerDir(root))
    const now = Date.now()
    const layer: LayerMeta = { size: plan.size, entries: plan.entries, blocks: plan.blocks, created: now }
    if (meta.untrusted === true) layer.untrusted = true
    const batch = this.#db.batch()
    batch.put(kFingerprint(root), encodeFingerprint(print))
    batch.put(kLayer(root), Buffer.from(JSON.stringify(layer)))
    batch.put(kUsed(root), Buffer.from(String(now)))
    batch.del(kPending(root))
    await batch.write()
    this.#touched.set(root, now)
  }

  /**
   * Removes a layer so that a crash at any moment leaves it either whole or on its
   * way out: the layer key is replaced by a `removing:` mark (it is invisible from
   * then on), its dir is moved into staging, its index keys are dropped, the mark
   * goes, the dir is deleted. open() finishes a marked removal. With `unlessLeased`,
   * a lease taken on the layer before the mark was visible rolls the removal back.
   */
  async #discard (root: string, opts: { unlessLeased?: boolean } = {}): Promise<boolean> {
    const raw = await this.#db.get(kLayer(root))
    const mark = this.#db.batch()
    mark.put(kRemoving(root), raw ?? Buffer.from('{}'))
    mark.del(kLayer(root))
    await mark.write()
    failpoint('gc:marked')
    if (opts.unlessLeased === true && raw !== undefined && this.#leased(root).has(root)) {
      const back = this.#db.batch()
      back.put(kLayer(root), raw)
      back.del(kRemoving(root))
      await back.write()
      return false
    }
    await this.#finishRemoval(root)
    this.#touched.delete(root)
    return true
  }

  async #finishRemoval (root: string): Promise<void> {
    const dir = this.layerDir(root)
    let moved: string | undefined
    if (existsSync(dir)) {
      moved = this.#stagingDir()
      renameSync(dir, `${moved}/removed`)
    }
    failpoint('gc:moved')
    await this.#dropIndex(root)
    failpoint('gc:unindexed')
    await this.#db.del(kRemoving(root))
    // Out of sight already; deleting a big tree takes seconds, which must not stall a daemon's event loop.
    if (moved !== undefined) await removeTreeAsync(moved)
  }

  /** Roots no collection may remove now: leased by a live process, or being committed or restored here. */
  #leased (except?: string): Set<string> {
    const held = scanLeases(this.dataDir).held
    for (const root of this.#rootLocks.keys()) if (root !== except) held.add(root)
    return held
  }

  async commit (dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
    const staging = this.#stagingDir()
    try {
      let src = dir
      const sameFs = statSync(dir).dev === statSync(staging).dev
      if (opts.keepSource === true || !sameFs) {
        src = `${staging}/tree`
        // cp -a keeps modes, owners, times, xattrs, hardlinks and special files; reflinks where the filesystem can.
        await execFileP('cp', ['-a', '--reflink=auto', '--', dir, src], { signal: opts.signal, maxBuffer: 1 << 20 })
      }
      opts.signal?.throwIfAborted()
      // The builder checks entries as a reader would, and the walk the format's
      // limits: the locations reported here need no second decode of the manifest.
      const found: Located[] = []
      const dropped = new Dropped()
      // Entry-list blocks go to the index while the walk goes on, a few MiB a
      // batch; the root goes with the pending marker in #install.
      const lists = this.#manifestStream()
      let installed = false
      let packed
      try {
        packed = await packTree(src, {
          pool: this.#workers,
          ...(this.#inlineMax !== undefined ? { inlineMax: this.#inlineMax } : {}),
          signal: opts.signal,
          onBlock: (b) => found.push(b),
          onManifestBlock: lists.add,
          // The layer dir is what gets mounted: it must hold exactly what the manifest says.
          normalize: true,
          onDrop: (d) => dropped.add(d),
          onProgress: (p) => opts.onProgress?.({ type: 'entries', done: p.entries, total: 0 })
        })
        await lists.flush()
        dropped.log(this.#log)
        const plan: IndexPlan = {
          locations: found,
          entries: packed.count,
          size: packed.size,
          blocks: packed.contentBlocks
        }
        const info = await this.#install('commit', src, packed.blocks, {}, true, plan)
        installed = true
        this.#log.debug({ layer: info.root.toString(), entries: packed.count, bytes: packed.size }, 'committed')
        return info
      } finally {
        await lists.end(installed)
      }
    } catch (err) {
      if (err instanceof StoreError) throw err
      throw new CommitError(`cannot commit ${dir}: ${(err as Error).message}`, { cause: err })
    } finally {
      removeTree(staging)
    }
  }

  /** Drops a layer's keys: its block locations, then the manifest blocks no other layer links to. */
  async #dropIndex (root: string): Promise<void> {
    const rootBytes = await this.#db.get(kManifestBlock(root))
    let batch = this.#db.batch()
    batch.del(kLayer(root))
    await batch.write()
    batch = this.#db.batch()
    const own = [root]
    if (rootBytes !== undefined) {
      try {
        for (const listCid of decodeRoot(rootBytes).entries) {
          own.push(listCid.toString())
          const list = await this.#db.get(kManifestBlock(listCid.toString()))
          if (list === undefined) continue
          for (const e of decodeEntryList(list)) {
            for (const c of e.chunks ?? []) batch.del(kBlock(c.cid.toString(), root))
          }
          if (batch.length >= BATCH) {
            await batch.write()
            batch = this.#db.batch()
          }
        }
      } catch (err) {
        this.#sweepAtNextOpen = true
        this.#log.warn({ err, layer: root }, 'could not read the manifest of a dropped layer; the next open sweeps its block locations')
      }
    }
    await batch.write()
    const others: string[] = []
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) others.push(key.slice('layer:'.length))
    for await (const key of this.#db.keys({ gte: 'pending:', lt: 'pending;' })) others.push(key.slice('pending:'.length))
    const linked = await this.#linkedManifestBlocks(others.filter((o) => o !== root))
    batch = this.#db.batch()
    // A commit writing its manifest may share these blocks before it has a pending marker.
    if (this.#manifestsInFlight > 0) this.#sweepAtNextOpen = true
    else for (const cid of own) if (!linked.has(cid)) batch.del(kManifestBlock(cid))
    batch.del(kUsed(root))
    batch.del(kFingerprint(root))
    await batch.write()
  }

  async has (root: CID): Promise<boolean> {
    return (await this.getLayer(root)) !== undefined
  }

  async #meta (root: string): Promise<LayerMeta | undefined> {
    const raw = await this.#db.get(kLayer(root))
    return raw === undefined ? undefined : JSON.parse(Buffer.from(raw).toString()) as LayerMeta
  }

  async getLayer (root: CID): Promise<LayerInfo | undefined> {
    const key = root.toString()
    const meta = await this.#meta(key)
    if (meta === undefined || meta.corrupt === true) return undefined
    const path = this.layerDir(key)
    if (!existsSync(path)) return undefined
    return { root, path, size: meta.size, entries: meta.entries, blocks: meta.blocks, created: meta.created }
  }

  async listLayers (): Promise<LayerInfo[]> {
    const out: LayerInfo[] = []
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) {
      const info = await this.getLayer(CID.parse(key.slice('layer:'.length)))
      if (info !== undefined) out.push(info)
    }
    return out
  }

  async removeLayer (root: CID): Promise<void> {
    const key = root.toString()
    await this.#exclusive(key, async () => await this.#discard(key))
  }

  async hasBlock (cid: CID): Promise<boolean> {
    const key = cid.toString()
    if (cid.code === DAG_CBOR) return (await this.#db.get(kManifestBlock(key))) !== undefined
    return (await this.#locate(key)).length > 0
  }

  /**
   * Where a content block lies, in every layer that holds it. Lookups made in the
   * same turn of the event loop (a peer's want-list, a restore's window of blocks)
   * share one index read: a `getMany` of (block, layer) keys when the store holds
   * few layers, a range scan per block otherwise.
   */
  async #locate (key: string): Promise<Location[]> {
    const { promise, resolve, reject } = Promise.withResolvers<Location[]>()
    this.#lookups.push({ key, resolve, reject })
    if (!this.#lookupScheduled) {
      this.#lookupScheduled = true
      setImmediate(() => { void this.#runLookups() })
    }
    return await promise
  }

  readonly #lookups: Array<{ key: string, resolve: (locs: Location[]) => void, reject: (err: Error) => void }> = []
  #lookupScheduled = false

  async #runLookups (): Promise<void> {
    const batch = this.#lookups.splice(0, LOOKUP_BATCH)
    if (this.#lookups.length > 0) setImmediate(() => { void this.#runLookups() })
    else this.#lookupScheduled = false
    try {
      const layers: string[] = []
      for await (const k of this.#db.keys({ gte: 'layer:', lt: 'layer;', limit: LOOKUP_MAX_LAYERS + 1 })) layers.push(k.slice('layer:'.length))
      if (layers.length <= LOOKUP_MAX_LAYERS) {
        const values = layers.length === 0 ? [] : await this.#db.getMany(batch.flatMap((b) => layers.map((l) => kBlock(b.key, l))))
        batch.forEach((b, i) => {
          const locs: Location[] = []
          layers.forEach((l, j) => {
            const v = values[i * layers.length + j]
            if (v !== undefined) locs.push(decodeLocation(l, v))
          })
          b.resolve(locs)
        })
        return
      }
      await Promise.all(batch.map(async (b) => {
        const locs: Location[] = []
        for await (const [k, v] of this.#db.iterator({ gte: `block:${b.key}:`, lt: `block:${b.key};` })) locs.push(decodeLocation(k.slice(`block:${b.key}:`.length), v))
        b.resolve(locs)
      }))
    } catch (err) {
      for (const b of batch) b.reject(err as Error)
    }
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const found = await this.#findBlock(cid, opts)
    if (found instanceof Uint8Array) return found
    throw found ?? new BlockNotFoundError(cid.toString())
  }

  /** The block's verified bytes; else why not (undefined: no layer here has it). */
  async #findBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array | BlockCorruptError | undefined> {
    opts.signal?.throwIfAborted()
    const key = cid.toString()
    if (!isStrataCid(cid)) return undefined
    if (cid.code === DAG_CBOR) {
      const bytes = await this.#db.get(kManifestBlock(key))
      if (bytes === undefined) return undefined
      verifyBlock(cid, bytes)
      return bytes
    }
    let corrupt: BlockCorruptError | undefined
    for (const loc of await this.#locate(key)) {
      try {
        const bytes = readRange(`${this.layerDir(loc.layer)}/${loc.path}`, loc.offset, loc.length)
        verifyBlock(cid, bytes)
        this.touch(loc.layer)
        return bytes
      } catch (err) {
        if (!(err instanceof BlockMismatchError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        corrupt = new BlockCorruptError(key, loc.layer, { cause: err })
        await this.#markCorrupt(loc.layer, { reason: 'block', path: loc.path })
      }
    }
    return corrupt
  }

  async #markCorrupt (root: string, why: { path?: string, reason?: string } = { reason: 'block' }): Promise<void> {
    const meta = await this.#meta(root)
    if (meta === undefined || meta.corrupt === true) return
    meta.corrupt = true
    if (why.path !== undefined) meta.corruptPath = why.path
    if (why.reason !== undefined) meta.corruptReason = why.reason
    await this.#db.put(kLayer(root), Buffer.from(JSON.stringify(meta)))
    this.#log.error({ event: 'layer-corrupt', layer: root, path: why.path, reason: why.reason }, 'layer marked corrupt: it is not what its manifest says and will not be used again')
  }

  async markCorrupt (root: CID | string, why: { path?: string, reason?: string } = {}): Promise<void> {
    await this.#markCorrupt(root.toString(), why)
  }

  async layerRoots (): Promise<string[]> {
    const out: string[] = []
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) out.push(key.slice('layer:'.length))
    return out
  }

  async checkLayer (root: CID, opts: { signal?: AbortSignal } = {}): Promise<LayerCheck> {
    const key = root.toString()
    const meta = await this.#meta(key)
    if (meta === undefined || !existsSync(this.layerDir(key))) return { status: 'missing', root: key }
    const corrupt = (m: LayerMeta): LayerCheck => ({
      status: 'corrupt',
      root: key,
      ...(m.corruptPath !== undefined ? { path: m.corruptPath } : {}),
      ...(m.corruptReason !== undefined ? { reason: m.corruptReason } : {})
    })
    if (meta.corrupt === true) return corrupt(meta)
    const raw = await this.#db.get(kFingerprint(key))
    // Layers indexed before fingerprints were kept have none to compare with.
    const want = raw === undefined ? undefined : decodeFingerprint(raw)
    if (want !== undefined) {
      let got
      try {
        got = await fingerprint(this.layerDir(key), opts)
      } catch (err) {
        // Not a hit, and no mark: the dir may be on its way out, or the walk short of descriptors.
        if (opts.signal?.aborted === true) throw err
        this.#log.warn({ err, layer: key }, 'cannot walk a layer dir to check it: not a hit')
        return { status: 'missing', root: key }
      }
      if (got.digest !== want.digest) {
        await this.#markCorrupt(key, { reason: 'stat' })
        return corrupt({ ...meta, corruptReason: 'stat' })
      }
    }
    return { status: 'ok', layer: { root, path: this.layerDir(key), size: meta.size, entries: meta.entries, blocks: meta.blocks, created: meta.created } }
  }

  async verifyLayer (root: CID | string, opts: VerifyOptions = {}): Promise<LayerVerification> {
    const key = root.toString()
    const cid = typeof root === 'string' ? CID.parse(root) : root
    const meta = await this.#meta(key)
    if (meta === undefined) return { root: key, status: 'missing', files: 0, bytes: 0 }
    if (meta.corrupt === true) {
      return { root: key, status: 'corrupt', files: 0, bytes: 0, marked: true, ...(meta.corruptPath !== undefined ? { path: meta.corruptPath } : {}), ...(meta.corruptReason !== undefined ? { reason: meta.corruptReason } : {}) }
    }
    let bad: { path?: string, problem: string } | undefined
    let files = 0
    let bytes = 0
    if (!existsSync(this.layerDir(key))) bad = { problem: 'missing', path: '.' }
    else {
      try {
        const check = await verifyTree(this.layerDir(key), this.entries(cid), { untrusted: meta.untrusted === true, signal: opts.signal, onRead: opts.onRead })
        files = check.files
        bytes = check.bytes
        bad = check.bad
      } catch (err) {
        if (opts.signal?.aborted === true) throw err
        // A manifest block in the index that no longer hashes to its CID.
        if (!(err instanceof BlockMismatchError)) throw err
        bad = { problem: 'manifest' }
      }
    }
    if (bad === undefined) return { root: key, status: 'ok', files, bytes }
    await this.#markCorrupt(key, { reason: bad.problem, ...(bad.path !== undefined ? { path: bad.path } : {}) })
    return { root: key, status: 'corrupt', files, bytes, reason: bad.problem, ...(bad.path !== undefined ? { path: bad.path } : {}) }
  }

  async restore (root: CID, source: BlockSource, opts: RestoreOptions = {}): Promise<LayerInfo> {
    const have = await this.getLayer(root)
    if (have !== undefined) {
      this.touch(root)
      return have
    }
    const key = root.toString()
    const staging = this.#stagingDir()
    try {
      // Entry-list blocks go to the index as they arrive, a few MiB a batch, as in a
      // commit; the root goes with the pending marker in #install.
      const lists = this.#manifestStream()
      let installed = false
      let rootBlock: ManifestBlock | undefined
      let manifestBytes = 0
      const content: ContentSource = {
        // Every block is checked once, here: local blocks as they are read, the
        // source's on arrival unless the source checks them itself. A manifest block
        // is checked before it goes to the index, where other layers may read it.
        verified: true,
        getBlock: async (cid, o) => {
          const local = await this.#findBlock(cid, o).catch(() => undefined)
          const bytes = local instanceof Uint8Array ? local : await source.getBlock(cid, o)
          if (!(local instanceof Uint8Array) && source.verified !== true) verifyBlock(cid, bytes)
          if (cid.code === DAG_CBOR) {
            manifestBytes += bytes.length
            if (manifestBytes > LIMITS.manifestBytes) throw new CommitError(`layer ${key} has more than ${LIMITS.manifestBytes} bytes of manifest`)
            if (cid.equals(root)) rootBlock = { cid, bytes }
            else lists.add({ cid, bytes })
          }
          return bytes
        }
      }
      try {
        const tree = `${staging}/tree`
        // The index plan is made from the entry lists as materialize reads them, not
        // by decoding the whole manifest again once the tree is written.
        const locations: Located[] = []
        const distinct = new Set<string>()
        await materialize(root, tree, content, {
          pool: this.#workers,
          onEntryList: (entries) => { locate(entries, locations, distinct) },
          // Blocks from peers arrive with a round trip each: keep many asked at once.
          concurrency: RESTORE_CONCURRENCY,
          prefetchBytes: RESTORE_PREFETCH_BYTES,
          windowsAhead: RESTORE_WINDOWS_AHEAD,
          untrusted: opts.untrusted,
          signal: opts.signal,
          onProgress: (p) => opts.onProgress?.({ type: 'bytes', done: p.bytes, total: p.totalBytes })
        })
        await lists.flush()
        const decoded = decodeRoot(rootBlock!.bytes)
        const plan: IndexPlan = { locations, entries: decoded.count, size: decoded.size, blocks: distinct.size }
        failpoint('restore:materialized')
        const info = await this.#install('restore', tree, [rootBlock!], opts.untrusted === true ? { untrusted: true } : {}, true, plan)
        installed = true
        return info
      } finally {
        await lists.end(installed)
      }
    } catch (err) {
      if (err instanceof StoreError) throw err
      throw new CommitError(`cannot restore layer ${key}: ${(err as Error).message}`, { cause: err })
    } finally {
      removeTree(staging)
    }
  }

  async unpack (root: CID, dest: string, opts: MaterializeOptions = {}): Promise<{ entries: number, bytes: number }> {
    const info = await this.getLayer(root)
    if (info === undefined) throw new LayerNotFoundError(root.toString())
    const source: ContentSource = {
      getBlock: (cid, o) => this.getBlock(cid, o),
      localFile: (e) => `${info.path}/${e.path}`
    }
    // The manifest of a layer from a peer still says what the peer sent: its policy applies again.
    const untrusted = opts.untrusted === true || (await this.#meta(root.toString()))?.untrusted === true
    try {
      return await materialize(root, dest, source, { pool: this.#workers, ...opts, untrusted })
    } catch (err) {
      const bad = blockMismatch(err)
      if (bad !== undefined) await this.markCorrupt(root, { reason: 'block', path: bad.path })
      throw err
    }
  }

  async * entries (root: CID): AsyncGenerator<Entry, void, undefined> {
    const decoded = decodeRoot(await this.getBlock(root))
    for (const cid of decoded.entries) yield * decodeEntryList(await this.getBlock(cid))
  }

  async putRecord (key: string, value: Uint8Array): Promise<void> {
    await this.#db.put(kRecord(key), value)
  }

  async getRecord (key: string): Promise<Uint8Array | undefined> {
    return await this.#db.get(kRecord(key))
  }

  /** Records a use of the layer (a hit, a mount, a block served) for the collector's least-recently-used order. */
  touch (root: CID | string, at = Date.now()): void {
    const key = root.toString()
    if (at - (this.#touched.get(key) ?? 0) < this.#touchEveryMs) return
    this.#touched.set(key, at)
    const w = this.#db.put(kUsed(key), Buffer.from(String(at))).catch((err: unknown) => {
      this.#log.debug({ err, layer: key }, 'could not record a layer use')
    })
    this.#writes.add(w)
    void w.finally(() => this.#writes.delete(w))
  }

  /** Folds the leases of ended holders into the layers' last use and deletes them. */
  async #harvestLeases (): Promise<LeaseScan> {
    const scan = scanLeases(this.dataDir)
    for (const [root, at] of scan.used) this.touch(root, at)
    await Promise.all([...this.#writes])
    removeEnded(scan)
    return scan
  }

  async #lastUsed (root: string, created: number): Promise<number> {
    const raw = await this.#db.get(kUsed(root))
    const stored = raw === undefined ? created : Number(Buffer.from(raw).toString())
    return Math.max(Number.isFinite(stored) ? stored : created, this.#touched.get(root) ?? 0)
  }

  async gc (opts: GcOptions): Promise<GcReport> {
    checkSize('maxSize', opts.maxSize)
    if (opts.hardLimit !== undefined) {
      checkSize('hardLimit', opts.hardLimit)
      if (opts.hardLimit < opts.maxSize) throw new TypeError(`hardLimit (${opts.hardLimit}) must not be below maxSize (${opts.maxSize})`)
    }
    const run = this.#collecting.then(async () => await this.#gc(opts))
    this.#collecting = run.catch(() => {})
    return await run
  }

  async #gc (opts: GcOptions): Promise<GcReport> {
    const now = Date.now()
    const graceMs = opts.graceMs ?? 60_000
    const dryRun = opts.dryRun === true
    // Ended leases are records of use: fold them in, then forget them.
    const scan = await this.#harvestLeases()
    if (!dryRun) await this.#removeAside()
    // A layer marked corrupt is never offered again: it only takes room.
    const corrupt: Array<{ root: string, size: number, lastUsed: number }> = []
    for await (const [key, value] of this.#db.iterator({ gte: 'layer:', lt: 'layer;' })) {
      const meta = JSON.parse(Buffer.from(value).toString()) as LayerMeta
      if (meta.corrupt === true) corrupt.push({ root: key.slice('layer:'.length), size: meta.size, lastUsed: meta.created })
    }
    const corruptRemoved: GcReport['removed'] = []
    for (const c of corrupt) {
      if (!dryRun && !(await this.#exclusive(c.root, async () => await this.#discard(c.root, { unlessLeased: true })))) continue
      this.#log.info({ layer: c.root, dryRun }, 'removing a layer marked corrupt')
      corruptRemoved.push({ ...c, lastCopy: false, corrupt: true })
    }
    const layers: GcLayer[] = []
    for (const l of await this.listLayers()) {
      const root = l.root.toString()
      layers.push({ root, size: l.size, lastUsed: await this.#lastUsed(root, l.created) })
    }
    layers.sort((a, b) => a.lastUsed - b.lastUsed || (a.root < b.root ? -1 : 1))
    const before = layers.reduce((n, l) => n + l.size, 0)
    let total = before
    const report: GcReport = { dryRun, maxSize: opts.maxSize, hardLimit: opts.hardLimit ?? null, before, after: before, removed: corruptRemoved, kept: [] }
    const held = new Set([...scan.held, ...this.#rootLocks.keys()])
    const copies = new Map<string, number | undefined>()
    const copiesOf = async (root: string): Promise<number | undefined> => {
      if (!copies.has(root)) {
        let n: number | undefined
        try {
          n = await opts.copies?.(CID.parse(root), { signal: opts.signal })
        } catch (err) {
          this.#log.debug({ err, layer: root }, 'copy count unknown')
        }
        copies.set(root, n)
      }
      return copies.get(root)
    }
    const kept = new Map<string, GcKept>()
    const remove = async (l: GcLayer, lastCopy: boolean): Promise<boolean> => {
      opts.signal?.throwIfAborted()
      if (!dryRun) {
        const gone = await this.#exclusive(l.root, async () => await this.#discard(l.root, { unlessLeased: true }))
        if (!gone) {
          kept.set(l.root, { root: l.root, size: l.size, reason: 'leased' })
          return false
        }
      }
      if (lastCopy) this.#log.warn({ layer: l.root, size: l.size, dryRun }, 'removing the last known copy of a layer in the fleet: the store is over its hard limit')
      else this.#log.info({ layer: l.root, size: l.size, lastUsed: l.lastUsed, dryRun }, 'removing a least recently used layer')
      report.removed.push({ root: l.root, size: l.size, lastUsed: l.lastUsed, lastCopy })
      kept.delete(l.root)
      total -= l.size
      return true
    }
    const removed = new Set<string>()
    // First the layers others hold copies of (or nobody knows), down to maxSize.
    for (const l of layers) {
      if (total <= opts.maxSize) break
      if (held.has(l.root)) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'leased' })
        continue
      }
      if (now - l.lastUsed < graceMs) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'recent' })
        continue
      }
      if (await copiesOf(l.root) === 1) {
        kept.set(l.root, { root: l.root, size: l.size, reason: 'last-copy' })
        continue
      }
      if (await remove(l, false)) removed.add(l.root)
    }
    // Over the hard limit: recent layers and last copies go too, still least recently used first.
    if (opts.hardLimit !== undefined) {
      for (const l of layers) {
        if (total <= opts.hardLimit) break
        if (removed.has(l.root) || held.has(l.root) || kept.get(l.root)?.reason === 'leased') continue
        if (await remove(l, await copiesOf(l.root) === 1)) removed.add(l.root)
      }
    }
    report.after = total
    report.kept = [...kept.values()]
    if (total > opts.maxSize) this.#log.warn({ size: total, maxSize: opts.maxSize, kept: report.kept.length }, 'the store stays over its size budget: the rest is leased, recent or the last copy in the fleet')
    return report
  }

  /** Closes the index only (the lock stays), for openStore to retry on a rebuilt index. */
  async closeIndex (): Promise<void> {
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
      await this.#collecting
      await Promise.all([...this.#writes])
      if (!this.#poolGiven) await this.#pool?.close()
      if (!this.#sweepAtNextOpen) await this.#db.del(K_OPEN).catch((err: unknown) => this.#log.warn({ err }, 'could not mark the store closed'))
      await this.#db.close()
    } finally {
      this.#release()
    }
  }
}

function checkSize (name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`${name} must be a whole number of bytes >= 0, got ${v}`)
}

interface GcLayer {
  root: string
  size: number
  lastUsed: number
}

/** removeTree off the event loop; a tree that needs its directories opened up first falls back to it. */
async function removeTreeAsync (path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'EACCES' && code !== 'EPERM') throw err
    removeTree(path)
  }
}

function encodeLocation (path: string, offset: number, length: number): Uint8Array {
  return Buffer.from(`${offset}:${length}:${path}`)
}

function decodeLocation (layer: string, v: Uint8Array): Location {
  const s = Buffer.from(v).toString()
  const a = s.indexOf(':')
  const b = s.indexOf(':', a + 1)
  return { layer, offset: Number(s.slice(0, a)), length: Number(s.slice(a + 1, b)), path: s.slice(b + 1) }
}

/** The BlockMismatchError behind `err` (materialize wraps what its workers throw), if any. */
function blockMismatch (err: unknown): { path?: string } | undefined {
  for (let e = err as { code?: unknown, cause?: unknown, path?: unknown } | undefined, depth = 0; e !== undefined && e !== null && depth < 4; e = e.cause as typeof e, depth++) {
    if (e instanceof BlockMismatchError || e.code === 'ERR_BLOCK_MISMATCH') return typeof e.path === 'string' ? { path: e.path } : {}
  }
  return undefined
}

function readRange (path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const buf = Buffer.allocUnsafe(length)
    let got = 0
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, offset + got)
      if (n === 0) break
      got += n
    }
    return got === length ? buf : buf.subarray(0, got)
  } finally {
    closeSync(fd)
  }
}
