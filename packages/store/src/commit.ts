import { existsSync, renameSync, statSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { packTree, removeTree } from '@strata/chunker'
import type { FsPool } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { FPRINT, LAYER, MBLOCK, PENDING, USED } from './keys.ts'
import { encodeJson, readMeta } from './meta.ts'
import type { LayerMeta, PendingMeta } from './meta.ts'
import { planIndex } from './plan.ts'
import type { IndexPlan, Located, ManifestBlock } from './plan.ts'
import type { BlockIndex } from './block-index.ts'
import type { Dirs } from './dirs.ts'
import type { Leftovers, ManifestIndex } from './manifest.ts'
import type { Removal } from './remove.ts'
import type { RootLocks } from './root-locks.ts'
import type { Uses } from './uses.ts'
import { CommitError, StoreError } from './errors.ts'
import { encodeFingerprint, fingerprint } from './fingerprint.ts'
import { sealTree } from './seal.ts'
import { failpoint } from './failpoint.ts'
import { Dropped } from './dropped.ts'
import type { CommitOptions, LayerInfo } from './types.ts'

const execFileP = promisify(execFile)

export interface InstallDeps {
  db: Index
  log: Logger
  dirs: Dirs
  manifests: ManifestIndex
  leftovers: Leftovers
  locks: RootLocks
  removal: Removal
  blocks: BlockIndex
  uses: Uses
  getLayer: (root: CID) => Promise<LayerInfo | undefined>
  /** Seal layer files with fs-verity where the filesystem offers it. */
  verity: boolean
}

/** Moving a tree into `layers/` and indexing it: the part commits, restores and recovery share. */
export class Installer {
  readonly #d: InstallDeps
  /** Whether layer files get fs-verity: undefined until the first commit finds out whether the filesystem offers it. */
  #verity: boolean | undefined

  constructor (deps: InstallDeps) {
    this.#d = deps
    this.#verity = deps.verity ? undefined : false
  }

  /**
   * Moves a complete tree into the store as the layer `blocks` describe. The
   * manifest is checked first (a tree the format cannot carry is refused before
   * anything moves); its blocks and a pending marker are written before the
   * rename, which is the commit point; block locations and the layer key after.
   * When the index write fails (a full disk), the tree is moved back where it was.
   * A layer already in the store is kept and the new tree discarded.
   */
  async install (op: 'commit' | 'restore', tree: string, blocks: ManifestBlock[], meta: PendingMeta, known?: IndexPlan): Promise<LayerInfo> {
    const { db, dirs, locks, removal } = this.#d
    const root = blocks[0]!.cid.toString()
    const plan = known ?? planIndex(root, blocks)
    return await locks.exclusive(root, async () => {
      const existing = await this.#d.getLayer(blocks[0]!.cid)
      if (existing !== undefined) {
        removeTree(tree)
        return existing
      }
      // Not indexed, or corrupt: whatever is there is not a layer anyone may use.
      // A run that still has it mounted keeps its files: the dir is set aside,
      // not deleted, until no lease holds its root.
      if (existsSync(dirs.layer(root)) && locks.leased(root).has(root)) removal.setAside(root)
      if (existsSync(dirs.layer(root)) || (await readMeta(db, root)) !== undefined) await removal.discard(root)
      // Entry lists first (a commit's went while it walked), then the root with the
      // pending marker. Blocks written before a crash that leaves no marker are
      // swept at open.
      const lists = this.#d.manifests.stream()
      let marked = false
      try {
        for (const b of blocks.slice(1)) lists.add(b)
        await lists.flush()
        if (op === 'commit') failpoint('commit:manifest-partial')
        const batch = db.batch()
        batch.put(MBLOCK.key(root), blocks[0]!.bytes)
        batch.put(PENDING.key(root), encodeJson(meta))
        await batch.write()
        marked = true
      } finally {
        await lists.end(marked)
      }
      failpoint(`${op}:manifest-written`)
      renameSync(tree, dirs.layer(root))
      failpoint(`${op}:renamed`)
      try {
        await this.writeIndex(root, plan, meta, op)
      } catch (err) {
        await this.#unrename(root, tree, plan)
        throw err
      }
      return (await this.#d.getLayer(blocks[0]!.cid))!
    })
  }

  /** Undoes an install whose index write failed: the tree goes back, its keys go (or the next open sweeps them). */
  async #unrename (root: string, tree: string, plan: IndexPlan): Promise<void> {
    this.#d.leftovers.sweepAtNextOpen = true
    try {
      renameSync(this.#d.dirs.layer(root), tree)
    } catch (err) {
      this.#d.log.warn({ err, layer: root }, 'cannot move a layer whose index write failed back out of the store')
      return
    }
    try {
      await this.#d.blocks.drop(root, plan.locations)
      await this.#d.db.del(PENDING.key(root))
    } catch (err) {
      // Expected on a full disk, and repaired without help: the commit's own error is what the caller reports.
      this.#d.log.info({ err, layer: root }, 'cannot drop the index keys of a failed commit; the next open sweeps them')
    }
  }

  /** Indexes a layer whose dir is in place: block locations, fs-verity, the fingerprint, then the layer key. */
  async writeIndex (root: string, plan: IndexPlan, meta: PendingMeta, op: 'commit' | 'restore'): Promise<void> {
    const { db, dirs, log } = this.#d
    await this.#d.blocks.write(root, plan.locations)
    failpoint(`${op}:located`)
    if (this.#verity !== false) {
      const sealed = await sealTree(dirs.layer(root))
      if (this.#verity === undefined && sealed.supported !== undefined) {
        this.#verity = sealed.supported
        log.info({ dataDir: dirs.dataDir, verity: sealed.supported }, sealed.supported ? 'layer files get fs-verity' : 'the filesystem has no fs-verity: layers are guarded by their stat fingerprint only')
      }
    }
    // Taken once the dir is in place (its rename moved the root's ctime) and before the layer is visible.
    const print = await fingerprint(dirs.layer(root))
    const now = Date.now()
    const layer: LayerMeta = { size: plan.size, entries: plan.entries, blocks: plan.blocks, created: now }
    if (meta.untrusted === true) layer.untrusted = true
    const batch = db.batch()
    batch.put(FPRINT.key(root), encodeFingerprint(print))
    batch.put(LAYER.key(root), encodeJson(layer))
    batch.put(USED.key(root), Buffer.from(String(now)))
    batch.del(PENDING.key(root))
    await batch.write()
    this.#d.uses.wrote(root, now)
  }
}

export interface CommitDeps {
  log: Logger
  dirs: Dirs
  manifests: ManifestIndex
  installer: Installer
  workers: () => FsPool
  inlineMax: number | undefined
}

/** A tree packed for a commit: its manifest's root block and its index plan (the entry lists went to the caller). */
export interface PackedTree {
  root: ManifestBlock
  plan: IndexPlan
}

/**
 * Packs `src` in place, normalized to what its manifest records (the layer dir is
 * what gets mounted: it must hold exactly what the manifest says). Entry-list
 * blocks go to `onList` as the walk goes on. Uses nothing of the index.
 */
export async function packCommit (deps: Pick<CommitDeps, 'log' | 'workers' | 'inlineMax'>, src: string, opts: CommitOptions, onList: (block: ManifestBlock) => void): Promise<PackedTree> {
  // The builder checks entries as a reader would, and the walk the format's
  // limits: the locations reported here need no second decode of the manifest.
  const found: Located[] = []
  const dropped = new Dropped()
  const packed = await packTree(src, {
    pool: deps.workers(),
    ...(deps.inlineMax !== undefined ? { inlineMax: deps.inlineMax } : {}),
    signal: opts.signal,
    onBlock: (b) => found.push(b),
    onManifestBlock: onList,
    normalize: true,
    onDrop: (d) => dropped.add(d),
    onProgress: (p) => opts.onProgress?.({ type: 'entries', done: p.entries, total: 0 })
  })
  dropped.log(deps.log)
  return { root: packed.blocks[0]!, plan: { locations: found, entries: packed.count, size: packed.size, blocks: packed.contentBlocks } }
}

/** Packs `dir` in place (normalized to what its manifest records) and installs it as a layer. */
export async function commitTree (deps: CommitDeps, dir: string, opts: CommitOptions = {}): Promise<LayerInfo> {
  const staging = deps.dirs.staging()
  try {
    let src = dir
    if (opts.keepSource === true || !sameFilesystem(dir, staging)) {
      src = `${staging}/tree`
      // cp -a keeps modes, owners, times, xattrs, hardlinks and special files; reflinks where the filesystem can.
      await execFileP('cp', ['-a', '--reflink=auto', '--', dir, src], { signal: opts.signal, maxBuffer: 1 << 20 })
    }
    opts.signal?.throwIfAborted()
    // Entry-list blocks go to the index while the walk goes on, a few MiB a
    // batch; the root goes with the pending marker in install.
    const lists = deps.manifests.stream()
    let installed = false
    try {
      const packed = await packCommit(deps, src, opts, lists.add)
      await lists.flush()
      const info = await deps.installer.install('commit', src, [packed.root], {}, packed.plan)
      installed = true
      deps.log.debug({ layer: info.root.toString(), entries: packed.plan.entries, bytes: packed.plan.size }, 'committed')
      return info
    } finally {
      await lists.end(installed)
    }
  } catch (err) {
    throw commitError(dir, err)
  } finally {
    removeTree(staging)
  }
}

/** Bytes of entry-list blocks handed to the index before waiting for their write: a spilled manifest is not read into memory whole. */
const INSTALL_BATCH_BYTES = 4 * 1024 * 1024

/**
 * Installs a tree packed in place by packCommit (without the index), its entry
 * lists read back from where they were kept meanwhile: as commitTree does after its walk.
 */
export async function installPacked (deps: CommitDeps, src: string, packed: PackedTree, lists: Iterable<ManifestBlock>): Promise<LayerInfo> {
  const stream = deps.manifests.stream()
  let installed = false
  try {
    let bytes = 0
    for (const block of lists) {
      stream.add(block)
      bytes += block.bytes.length
      if (bytes >= INSTALL_BATCH_BYTES) {
        await stream.flush()
        bytes = 0
      }
    }
    await stream.flush()
    const info = await deps.installer.install('commit', src, [packed.root], {}, packed.plan)
    installed = true
    deps.log.debug({ layer: info.root.toString(), entries: packed.plan.entries, bytes: packed.plan.size }, 'committed')
    return info
  } catch (err) {
    throw commitError(src, err)
  } finally {
    await stream.end(installed)
  }
}

/** Whether `dir` can be renamed into the store's dirs (else a commit copies it). */
export function sameFilesystem (dir: string, storeDir: string): boolean {
  return statSync(dir).dev === statSync(storeDir).dev
}

/** A commit's failure as the store reports it: its own errors as they are, others as a CommitError naming the dir. */
export function commitError (dir: string, err: unknown): StoreError {
  if (err instanceof StoreError) return err
  return new CommitError(`cannot commit ${dir}: ${(err as Error).message}`, { cause: err })
}
