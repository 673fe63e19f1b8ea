import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { CID } from 'multiformats/cid'
import { pino } from 'pino'
import type { Logger } from 'pino'
import { decodeEntryList, decodeRoot, isStrataCid, materialize, packTree, verifyBlock, BlockMismatchError, DAG_CBOR, FsPool } from '@strata/chunker'
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
const BATCH = 5000

interface LayerMeta {
  size: number
  entries: number
  blocks: number
  created: number
  corrupt?: boolean
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
   * Makes the store consistent after a crash: staging is emptied, a layer dir the
   * index does not know is indexed if it packs to its name (the crash fell between
   * the rename and the index write) or removed, and index entries whose dir is
   * gone are dropped.
   */
  async recover (): Promise<void> {
    for (const name of readdirSync(`${this.dataDir}/staging`)) {
      rmSync(`${this.dataDir}/staging/${name}`, { recursive: true, force: true })
    }
    const dirs = new Set(readdirSync(`${this.dataDir}/layers`))
    const known = new Set<string>()
    for await (const key of this.#db.keys({ gte: 'layer:', lt: 'layer;' })) known.add(key.slice('layer:'.length))
    for (const root of known) {
      if (!dirs.has(root)) {
        this.#log.warn({ layer: root }, 'layer dir missing: dropping it from the index')
        await this.#dropIndex(root)
      }
    }
    for (const name of dirs) {
      if (known.has(name)) continue
      const path = `${this.dataDir}/layers/${name}`
      try {
        const packed = await packTree(path, { pool: this.#workers })
        if (packed.root.toString() === name) {
          await this.#index(name, path, packed.blocks, packed.contentBlocks)
          this.#log.info({ layer: name }, 'indexed a layer committed just before a crash')
          continue
        }
      } catch (err) {
        this.#log.warn({ err, layer: name }, 'unreadable layer dir left by a crash')
      }
      this.#log.warn({ layer: name }, 'removing a layer dir that is not a complete layer')
      rmSync(path, { recursive: true, force: true })
    }
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
      const packed = await packTree(src, {
        pool: this.#workers,
        ...(this.#inlineMax !== undefined ? { inlineMax: this.#inlineMax } : {}),
        signal: opts.signal,
        onWarning: (w) => this.#log.warn({ path: w.path }, w.message),
        onProgress: (p) => opts.onProgress?.({ type: 'entries', done: p.entries, total: 0 })
      })
      const root = packed.root.toString()
      const existing = await this.getLayer(packed.root)
      if (existing !== undefined) {
        if (src === dir) rmSync(dir, { recursive: true, force: true })
        return existing
      }
      const dest = this.layerDir(root)
      if (existsSync(dest)) rmSync(dest, { recursive: true, force: true })
      // The commit point: after this rename the layer is complete on disk; the
      // index write that follows makes it visible (recover() redoes it after a crash).
      renameSync(src, dest)
      await this.#index(root, dest, packed.blocks, packed.contentBlocks)
      this.#log.debug({ layer: root, entries: packed.count, bytes: packed.size }, 'committed')
      return (await this.getLayer(packed.root))!
    } catch (err) {
      if (err instanceof StoreError) throw err
      throw new CommitError(`cannot commit ${dir}: ${(err as Error).message}`, { cause: err })
    } finally {
      rmSync(staging, { recursive: true, force: true })
    }
  }

  /** Writes manifest blocks, block locations and the layer record in atomic batches, the record last. */
  async #index (root: string, dir: string, manifestBlocks: Array<{ cid: CID, bytes: Uint8Array }>, contentBlocks: number): Promise<void> {
    let batch = this.#db.batch()
    for (const b of manifestBlocks) batch.put(kManifestBlock(b.cid.toString()), b.bytes)
    let entries = 0
    let size = 0
    const decoded = decodeRoot(manifestBlocks[0]!.bytes)
    for (const listBlock of manifestBlocks.slice(1)) {
      for (const e of decodeEntryList(listBlock.bytes)) {
        entries++
        if (e.type !== 'file' || e.chunks === undefined) continue
        size += e.size
        let offset = 0
        for (const c of e.chunks) {
          batch.put(kBlock(c.cid.toString(), root), encodeLocation(e.path, offset, c.length))
          offset += c.length
          if (batch.length >= BATCH) {
            await batch.write()
            batch = this.#db.batch()
          }
        }
      }
    }
    if (entries !== decoded.count) throw new CommitError(`manifest of ${dir} declares ${decoded.count} entries, found ${entries}`)
    const meta: LayerMeta = { size, entries, blocks: contentBlocks, created: Date.now() }
    batch.put(kLayer(root), Buffer.from(JSON.stringify(meta)))
    await batch.write()
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

  async getLayer (root: CID): Promise<LayerInfo | undefined> {
    const key = root.toString()
    const raw = await this.#db.get(kLayer(key))
    if (raw === undefined) return undefined
    const meta = JSON.parse(Buffer.from(raw).toString()) as LayerMeta
    if (meta.corrupt === true) return undefined
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
    const dir = this.layerDir(key)
    // Out of sight first (has() needs the dir), then out of the index, then off the disk.
    let moved: string | undefined
    if (existsSync(dir)) {
      moved = `${this.#stagingDir()}/removed`
      renameSync(dir, moved)
    }
    await this.#dropIndex(key)
    if (moved !== undefined) rmSync(moved.slice(0, -'/removed'.length), { recursive: true, force: true })
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
    const raw = await this.#db.get(kLayer(root))
    if (raw === undefined) return
    const meta = JSON.parse(Buffer.from(raw).toString()) as LayerMeta
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
      const manifestBlocks: Array<{ cid: CID, bytes: Uint8Array }> = []
      const content: ContentSource = {
        getBlock: async (cid, o) => {
          let bytes: Uint8Array
          if (await this.hasBlock(cid)) {
            try {
              bytes = await this.getBlock(cid, o)
            } catch {
              bytes = await source.getBlock(cid, o)
            }
          } else {
            bytes = await source.getBlock(cid, o)
          }
          verifyBlock(cid, bytes)
          if (cid.code === DAG_CBOR) manifestBlocks.push({ cid, bytes })
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
      const dest = this.layerDir(key)
      if (existsSync(dest)) rmSync(dest, { recursive: true, force: true })
      renameSync(tree, dest)
      // Manifest blocks in manifest order: the root first.
      manifestBlocks.sort((a, b) => (a.cid.equals(root) ? -1 : b.cid.equals(root) ? 1 : 0))
      const decoded = decodeRoot(manifestBlocks[0]!.bytes)
      const contentBlocks = new Set<string>()
      for (const m of manifestBlocks.slice(1)) for (const e of decodeEntryList(m.bytes)) for (const c of e.chunks ?? []) contentBlocks.add(c.cid.toString())
      const ordered = [manifestBlocks[0]!, ...decoded.entries.map((c) => manifestBlocks.find((m) => m.cid.equals(c))!)]
      await this.#index(key, dest, ordered, contentBlocks.size)
      return (await this.getLayer(root))!
    } catch (err) {
      if (err instanceof StoreError) throw err
      throw new CommitError(`cannot restore layer ${key}: ${(err as Error).message}`, { cause: err })
    } finally {
      rmSync(staging, { recursive: true, force: true })
    }
  }

  async unpack (root: CID, dest: string, opts: MaterializeOptions = {}): Promise<{ entries: number, bytes: number }> {
    const info = await this.getLayer(root)
    if (info === undefined) throw new LayerNotFoundError(root.toString())
    const source: ContentSource = {
      getBlock: (cid, o) => this.getBlock(cid, o),
      localFile: (e) => `${info.path}/${e.path}`
    }
    return await materialize(root, dest, source, { pool: this.#workers, ...opts })
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
