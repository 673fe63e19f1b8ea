import { decodeRoot, materialize, removeTree, verifyBlock, DAG_CBOR, LIMITS } from '@strata/chunker'
import type { ContentSource, FsPool } from '@strata/chunker'
import type { CID } from 'multiformats/cid'
import type { BlockIndex } from './block-index.ts'
import type { Installer } from './commit.ts'
import type { Dirs } from './dirs.ts'
import type { ManifestIndex } from './manifest.ts'
import { locate } from './plan.ts'
import type { IndexPlan, Located, ManifestBlock } from './plan.ts'
import { CommitError, StoreError } from './errors.ts'
import { failpoint } from './failpoint.ts'
import type { BlockSource, LayerInfo, RestoreOptions } from './types.ts'

/** Blocks a restore asks its source for at once. */
const RESTORE_CONCURRENCY = 512
/**
 * What a restore holds at once: the bytes of blocks from the moment they are asked
 * for until they are written (materialize's one budget), and windows of entries (at
 * most an entry list each) read ahead, so that the transfer keeps going through
 * stretches of small inline files, which only the disk slows.
 */
const RESTORE_BUDGET_BYTES = 16 * 1024 * 1024
const RESTORE_WINDOWS_AHEAD = 8

export interface RestoreDeps {
  dirs: Dirs
  manifests: ManifestIndex
  installer: Installer
  blocks: Pick<BlockIndex, 'find'>
  workers: () => FsPool
}

/**
 * Materializes a layer into staging from blocks, a block any local layer holds
 * read locally and only the others asked of `source`, then installs it as a commit does.
 */
export async function restoreLayer (deps: RestoreDeps, root: CID, source: BlockSource, opts: RestoreOptions = {}): Promise<LayerInfo> {
  const key = root.toString()
  const staging = deps.dirs.staging()
  try {
    // Entry-list blocks go to the index as they arrive, a few MiB a batch, as in a
    // commit; the root goes with the pending marker in install.
    const lists = deps.manifests.stream()
    let installed = false
    let rootBlock: ManifestBlock | undefined
    let manifestBytes = 0
    const content: ContentSource = {
      // Every block is checked once, here: local blocks as they are read, the
      // source's on arrival unless the source checks them itself. A manifest block
      // is checked before it goes to the index, where other layers may read it.
      verified: true,
      getBlock: async (cid, o) => {
        const local = await deps.blocks.find(cid, o).catch(() => undefined)
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
        pool: deps.workers(),
        onEntryList: (entries) => { locate(entries, locations, distinct) },
        // Blocks from peers arrive with a round trip each: keep many asked at once.
        concurrency: RESTORE_CONCURRENCY,
        prefetchBytes: RESTORE_BUDGET_BYTES,
        windowsAhead: RESTORE_WINDOWS_AHEAD,
        untrusted: opts.untrusted,
        signal: opts.signal,
        onProgress: (p) => opts.onProgress?.({ type: 'bytes', done: p.bytes, total: p.totalBytes })
      })
      await lists.flush()
      const decoded = decodeRoot(rootBlock!.bytes)
      const plan: IndexPlan = { locations, entries: decoded.count, size: decoded.size, blocks: distinct.size }
      failpoint('restore:materialized')
      const info = await deps.installer.install('restore', tree, [rootBlock!], opts.untrusted === true ? { untrusted: true } : {}, plan)
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
