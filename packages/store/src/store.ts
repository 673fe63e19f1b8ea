import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync, readSync, renameSync, statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { decodeEntryList, decodeRoot, isStrataCid, materialize, packTree, verifyBlock, BlockMismatchError, DAG_CBOR, EntryChecker, FsPool, LIMITS, removeTree } from '@strata/chunker'
import type { ContentSource, Entry, MaterializeOptions } from '@strata/chunker'
import type { BlockSource, CommitOptions, LayerInfo, RestoreOptions, Store, StoreInit } from './types.ts'
import { BlockCorruptError, BlockNotFoundError, CommitError, LayerNotFoundError, StoreError, StoreVersionError } from './errors.ts'
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
const BATCH = 5000

interface LayerMeta {
  size: number
  entries: number
  blocks: number
  created: number
  corrupt?: boolean
  /** Restored from a peer under the peer policy. */
  untrusted?: boolean
}

/** Written before a layer dir is renamed into place; lets recover() finish the index. */
interface PendingMeta {
  untrusted?: boolean
}

interface ManifestBlock {
  cid: CID
  bytes: Uint8Array
}

/** What indexing a layer writes, worked out (and the manifest checked) before anything moves. */
interface IndexPlan {
  locations: Array<[string, Uint8Array]>
  entries: number
  size: number
  blocks: number
}

function planIndex (root: string, blocks: ManifestBlock[]): IndexPlan {
  const decoded = decodeRoot(blocks[0]!.bytes)
  if (blocks.length !== decoded.entries.length + 1) throw new CommitError(`manifest of ${root} is incomplete`)
  const checker = new EntryChecker(decoded.count, decoded.size)
  const locations: Array<[string, Uint8Array]> = []
  const distinct = new Set<string>()
  decoded.entries.forEach((cid, i) => {
    const list = blocks[i + 1]!
    if (!list.cid.equals(cid)) throw new CommitError(`manifest of ${root} has its blocks out of order`)
    for (const e of decodeEntryList(list.bytes)) {
      checker.check(e)
      if (e.type !== 'file' || e.chunks === undefined) continue
      let offset = 0
      for (const c of e.chunks) {
        const key = c.cid.toString()
        distinct.add(key)
        locations.push([kBlock(key, root), encodeLocation(e.path, offset, c.length)])
        offset += c.length
      }
    }
  })
  checker.end()
  return { locations, entries: decoded.count, size: decoded.size, blocks: distinct.size }
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
}

/** Opens (creating if needed) the store under `dataDir`. */
export async function openStore (init: OpenStoreInit): Promise<Store & LocalStore> {
  const log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'store' })
  const dataDir = init.dataDir
  mkdirSync(`${dataDir}/layers`, { recursive: true })
  mkdirSync(`${dataDir}/staging`, { recursive: true })
  const release = await acquireLock(dataDir, { wait: init.wait ?? true, signal: init.signal, log })
  try {
    const db = new ClassicLevel<string, Uint8Array>(`${dataDir}/index`, { keyEncoding: 'utf8', valueEncoding: 'view' })
    await db.open()
    const store = new LayerStore(dataDir, db, log, release, init.inlineMax)
    try {
      await store.checkVersion()
      await store.recover()
    } catch (err) {
      await store.close()
      throw err
    }
    return store
  } catch (err) {
    release()
    throw err
  }
}

/** What the store offers beyond the shared interface, for the CLI and the runner on this machine. */
export interface LocalStore {
  /** Writes a committed layer into `dest` (absent or empty), copying from the local layer dir and verifying. */
  unpack(root: CID, dest: string, opts?: MaterializeOptions): Promise<{ entries: number, bytes: number }>
  /** The layer's entries, in manifest order. */
  entries(root: CID): AsyncGenerator<Entry, void, undefined>
}

class LayerStore implements Store, LocalStore {
  readonly dataDir: string
  readonly #db: ClassicLevel<string, Uint8Array>
  readonly #log: Logger
  readonly #release: () => void
  #closed = false
  #pool: FsPool | undefined
  readonly #rootLocks = new Map<string, Promise<void>>()
  readonly #inlineMax: number | undefined

  constructor (dataDir: string, db: ClassicLevel<string, Uint8Array>, log: Logger, release: () => void, inlineMax: number | undefined) {
    this.dataDir = dataDir
    this.#inlineMax = inlineMax
    this.#db = db
    this.#log = log
    this.#release = release
  }

  async checkVersion (): Promise<void> {
    const found = await this.#db.get(K_VERSION)
    if (found === undefined) {
      await this.#db.put(K_VERSION, Buffer.from(STORE_FORMAT))
      return
    }
    const text = Buffer.from(found).toString()
    if (text !== STORE_FORMAT) throw new StoreVersionError(this.dataDir, text, STORE_FORMAT)
  }

  /**
   * Makes the store consistent after a crash: staging is emptied; a layer dir the
   * index does not know is indexed from the manifest its commit stored first (the
   * crash fell between the rename and the index write), or else removed; index
   * entries whose dir is gone are dropped.
   */
  async recover (): Promise<void> {
    for (const name of readdirSync(`${this.dataDir}/staging`)) {
      try {
        removeTree(`${this.dataDir}/staging/${name}`)
      } catch (err) {
        this.#log.warn({ err, path: name }, 'cannot remove a staging dir; will try again at the next open')
      }
    }
    const dirs = new Set(readdirSync(`${this.dataDir}/layers`))
    const known = new Set<string>()
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) known.add(key.slice('layer:'.length))
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
          const blocks = await this.#storedManifest(name)
          await this.#writeIndex(name, planIndex(name, blocks), marker)
          this.#log.info({ layer: name }, 'indexed a layer committed just before a crash')
          continue
        } catch (err) {
          this.#log.warn({ err, layer: name }, 'the manifest of an interrupted commit is unreadable')
        }
      }
      this.#log.warn({ layer: name }, 'removing a layer dir that is not a complete layer')
      try {
        removeTree(this.layerDir(name))
      } catch (err) {
        this.#log.warn({ err, layer: name }, 'cannot remove an incomplete layer dir')
      }
    }
    for (const name of pending.keys()) {
      if (!dirs.has(name) && !known.has(name)) await this.#db.del(kPending(name))
    }
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
   * A layer already in the store is kept and the new tree discarded.
   */
  async #install (tree: string, blocks: ManifestBlock[], meta: PendingMeta, ownsTree: boolean, known?: IndexPlan): Promise<LayerInfo> {
    const root = blocks[0]!.cid.toString()
    const plan = known ?? planIndex(root, blocks)
    return await this.#exclusive(root, async () => {
      const existing = await this.getLayer(blocks[0]!.cid)
      if (existing !== undefined) {
        if (ownsTree) removeTree(tree)
        return existing
      }
      // Not indexed, or corrupt: whatever is there is not a layer anyone may use.
      if (existsSync(this.layerDir(root))) await this.#discard(root)
      const batch = this.#db.batch()
      for (const b of blocks) batch.put(kManifestBlock(b.cid.toString()), b.bytes)
      batch.put(kPending(root), Buffer.from(JSON.stringify(meta)))
      await batch.write()
      renameSync(tree, this.layerDir(root))
      await this.#writeIndex(root, plan, meta)
      return (await this.getLayer(blocks[0]!.cid))!
    })
  }

  async #writeIndex (root: string, plan: IndexPlan, meta: PendingMeta): Promise<void> {
    for (let i = 0; i < plan.locations.length; i += BATCH) {
      const batch = this.#db.batch()
      for (const [key, value] of plan.locations.slice(i, i + BATCH)) batch.put(key, value)
      await batch.write()
    }
    const layer: LayerMeta = { size: plan.size, entries: plan.entries, blocks: plan.blocks, created: Date.now() }
    if (meta.untrusted === true) layer.untrusted = true
    const batch = this.#db.batch()
    batch.put(kLayer(root), Buffer.from(JSON.stringify(layer)))
    batch.del(kPending(root))
    await batch.write()
  }

  /** Takes a layer dir out of sight, out of the index, then off the disk. */
  async #discard (root: string): Promise<void> {
    const dir = this.layerDir(root)
    let moved: string | undefined
    if (existsSync(dir)) {
      moved = this.#stagingDir()
      renameSync(dir, `${moved}/removed`)
    }
    await this.#dropIndex(root)
    if (moved !== undefined) removeTree(moved)
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
      const found: Array<{ cid: string, path: string, offset: number, length: number }> = []
      const packed = await packTree(src, {
        pool: this.#workers,
        ...(this.#inlineMax !== undefined ? { inlineMax: this.#inlineMax } : {}),
        signal: opts.signal,
        onBlock: (b) => found.push(b),
        onWarning: (w) => this.#log.warn({ path: w.path }, w.message),
        onProgress: (p) => opts.onProgress?.({ type: 'entries', done: p.entries, total: 0 })
      })
      const root = packed.root.toString()
      const plan: IndexPlan = {
        locations: found.map((b) => [kBlock(b.cid, root), encodeLocation(b.path, b.offset, b.length)]),
        entries: packed.count,
        size: packed.size,
        blocks: packed.contentBlocks
      }
      const info = await this.#install(src, packed.blocks, {}, true, plan)
      this.#log.debug({ layer: info.root.toString(), entries: packed.count, bytes: packed.size }, 'committed')
      return info
    } catch (err) {
      if (err instanceof StoreError) throw err
      throw new CommitError(`cannot commit ${dir}: ${(err as Error).message}`, { cause: err })
    } finally {
      removeTree(staging)
    }
  }

  async #dropIndex (root: string): Promise<void> {
    const rootBytes = await this.#db.get(kManifestBlock(root))
    let batch = this.#db.batch()
    batch.del(kLayer(root))
    await batch.write()
    batch = this.#db.batch()
    if (rootBytes !== undefined) {
      try {
        for (const listCid of decodeRoot(rootBytes).entries) {
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
        this.#log.warn({ err, layer: root }, 'could not read the manifest of a dropped layer; its block locations stay until they fail a read')
      }
    }
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
    for await (const _ of this.#db.keys({ gte: `block:${key}:`, lt: `block:${key};`, limit: 1 })) return true
    return false
  }

  async getBlock (cid: CID, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    opts.signal?.throwIfAborted()
    const key = cid.toString()
    if (!isStrataCid(cid)) throw new BlockNotFoundError(key)
    if (cid.code === DAG_CBOR) {
      const bytes = await this.#db.get(kManifestBlock(key))
      if (bytes === undefined) throw new BlockNotFoundError(key)
      verifyBlock(cid, bytes)
      return bytes
    }
    let corrupt: BlockCorruptError | undefined
    for await (const [k, v] of this.#db.iterator({ gte: `block:${key}:`, lt: `block:${key};` })) {
      const loc = decodeLocation(k.slice(`block:${key}:`.length), v)
      try {
        const bytes = readRange(`${this.layerDir(loc.layer)}/${loc.path}`, loc.offset, loc.length)
        verifyBlock(cid, bytes)
        return bytes
      } catch (err) {
        if (!(err instanceof BlockMismatchError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        corrupt = new BlockCorruptError(key, loc.layer, { cause: err })
        await this.#markCorrupt(loc.layer)
      }
    }
    throw corrupt ?? new BlockNotFoundError(key)
  }

  async #markCorrupt (root: string): Promise<void> {
    const meta = await this.#meta(root)
    if (meta === undefined) return
    meta.corrupt = true
    await this.#db.put(kLayer(root), Buffer.from(JSON.stringify(meta)))
    this.#log.error({ layer: root }, 'layer marked corrupt: a block read from it did not match its hash')
  }

  async restore (root: CID, source: BlockSource, opts: RestoreOptions = {}): Promise<LayerInfo> {
    const have = await this.getLayer(root)
    if (have !== undefined) return have
    const key = root.toString()
    const staging = this.#stagingDir()
    try {
      const manifestBlocks = new Map<string, ManifestBlock>()
      let manifestBytes = 0
      const content: ContentSource = {
        // materialize() verifies every block it is given.
        getBlock: async (cid, o) => {
          let bytes: Uint8Array | undefined
          if (await this.hasBlock(cid)) {
            try {
              bytes = await this.getBlock(cid, o)
            } catch {
              bytes = undefined
            }
          }
          bytes ??= await source.getBlock(cid, o)
          if (cid.code === DAG_CBOR) {
            manifestBytes += bytes.length
            if (manifestBytes > LIMITS.manifestBytes) throw new CommitError(`layer ${key} has more than ${LIMITS.manifestBytes} bytes of manifest`)
            manifestBlocks.set(cid.toString(), { cid, bytes })
          }
          return bytes
        }
      }
      const tree = `${staging}/tree`
      await materialize(root, tree, content, {
        pool: this.#workers,
        untrusted: opts.untrusted,
        signal: opts.signal,
        onProgress: (p) => opts.onProgress?.({ type: 'bytes', done: p.bytes, total: p.totalBytes })
      })
      const rootBlock = manifestBlocks.get(key)!
      const ordered = [rootBlock, ...decodeRoot(rootBlock.bytes).entries.map((c) => manifestBlocks.get(c.toString())!)]
      return await this.#install(tree, ordered, opts.untrusted === true ? { untrusted: true } : {}, true)
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
    return await materialize(root, dest, source, { pool: this.#workers, ...opts, untrusted })
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

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    try {
      await this.#pool?.close()
      await this.#db.close()
    } finally {
      this.#release()
    }
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
