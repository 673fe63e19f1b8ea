import { readdirSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { ClassicLevel } from 'classic-level'
import { CID } from 'multiformats/cid'
import { packTree, removeTree, verifyBlock } from '@strata/chunker'
import type { FsPool } from '@strata/chunker'
import type { Logger } from 'pino'
import type { Index } from './keys.ts'
import { BLOCK, FPRINT, K_OPEN, LAYER, MBLOCK, PENDING, RECORD, REMOVING, USED } from './keys.ts'
import type { Family } from './keys.ts'
import { writeInBatches } from './batches.ts'
import type { Op } from './batches.ts'
import { planIndex } from './plan.ts'
import type { IndexPlan, Located } from './plan.ts'
import type { PendingMeta } from './meta.ts'
import { readRange } from './block-index.ts'
import type { Installer } from './commit.ts'
import type { Dirs } from './dirs.ts'
import { isHeld } from './dirs.ts'
import type { Leftovers, ManifestIndex } from './manifest.ts'
import type { Removal } from './remove.ts'
import type { Uses } from './uses.ts'
import { CommitError, IndexCorruptError } from './errors.ts'

const execFileP = promisify(execFile)

export interface RecoverDeps {
  db: Index
  log: Logger
  dirs: Dirs
  manifests: ManifestIndex
  leftovers: Leftovers
  installer: Pick<Installer, 'writeIndex'>
  removal: Pick<Removal, 'finish' | 'dropIndex' | 'removeAside'>
  uses: Pick<Uses, 'harvestLeases'>
  workers: () => FsPool
  inlineMax: number | undefined
}

/**
 * Makes the store consistent after a crash: staging is emptied (but for the dirs
 * a live process holds, see Dirs.held()); removals that
 * were marked are finished; a layer dir the index does not know is indexed from
 * the manifest its commit stored first (the crash fell between the rename and the
 * index write) once its content verifies, or else removed; index entries whose
 * dir is gone are dropped. After a process died with the store open, orphan
 * index keys are swept. With `rebuild` (the index is new but layer dirs exist),
 * every layer dir is re-packed and indexed when it still packs to its name.
 */
export async function recover (d: RecoverDeps, rebuild = false): Promise<void> {
  const { db, log, dirs } = d
  const layersDir = `${dirs.dataDir}/layers`
  const stagingDir = `${dirs.dataDir}/staging`
  for (const name of readdirSync(stagingDir)) {
    if (isHeld(`${stagingDir}/${name}`)) continue
    try {
      removeTree(`${stagingDir}/${name}`)
    } catch (err) {
      log.warn({ err, path: name }, 'cannot remove a staging dir; will try again at the next open')
    }
  }
  if (rebuild) {
    await rebuildIndex(d)
    await db.put(K_OPEN, Buffer.from(String(process.pid)))
    return
  }
  const dirty = (await db.get(K_OPEN)) !== undefined
  for await (const key of db.keys(REMOVING.range)) {
    const root = REMOVING.id(key)
    log.warn({ layer: root }, 'finishing the removal of a layer interrupted by a crash')
    await d.removal.finish(root)
  }
  const present = new Set(readdirSync(layersDir))
  const known = new Set<string>()
  for await (const [key, value] of db.iterator(LAYER.range)) {
    try {
      JSON.parse(Buffer.from(value).toString())
    } catch (err) {
      throw new IndexCorruptError(`the index entry ${key} is not JSON`, { cause: err })
    }
    known.add(LAYER.id(key))
  }
  const pending = new Map<string, PendingMeta>()
  for await (const [key, value] of db.iterator(PENDING.range)) {
    pending.set(PENDING.id(key), JSON.parse(Buffer.from(value).toString()) as PendingMeta)
  }
  for (const root of known) {
    if (!present.has(root)) {
      log.warn({ layer: root }, 'layer dir missing: dropping it from the index')
      await d.removal.dropIndex(root)
    }
  }
  for (const name of present) {
    if (known.has(name)) continue
    const marker = pending.get(name)
    if (marker !== undefined) {
      try {
        const plan = planIndex(name, await d.manifests.stored(name))
        verifyContent(dirs.layer(name), plan)
        await d.installer.writeIndex(name, plan, marker, 'commit')
        log.info({ layer: name }, 'indexed a layer committed just before a crash')
        continue
      } catch (err) {
        log.warn({ err, layer: name }, 'an interrupted commit left a layer dir that does not verify')
      }
    }
    log.warn({ layer: name }, 'removing a layer dir that is not a complete layer')
    try {
      dirs.hide(name)
      present.delete(name)
    } catch (err) {
      log.warn({ err, layer: name }, 'cannot remove an incomplete layer dir')
    }
  }
  for (const name of pending.keys()) {
    if (!present.has(name) && !known.has(name)) await db.del(PENDING.key(name))
  }
  if (dirty) await sweep(d)
  await d.uses.harvestLeases(dirs.dataDir)
  await d.removal.removeAside()
  await db.put(K_OPEN, Buffer.from(String(process.pid)))
}

/**
 * Deletes index keys that belong to no layer: block locations and last-use
 * entries of layers that are gone, manifest blocks no layer links to. Runs at
 * open after a process died with the store open (a crash can leave them between
 * the writes of a commit or a removal); it reads every such key once.
 */
export async function sweep (d: Pick<RecoverDeps, 'db' | 'log' | 'manifests' | 'leftovers'>): Promise<{ blocks: number, manifestBlocks: number, used: number }> {
  const { db, manifests, leftovers } = d
  const live = new Set<string>()
  for await (const key of db.keys(LAYER.range)) live.add(LAYER.id(key))
  for await (const key of db.keys(PENDING.range)) live.add(PENDING.id(key))
  const linked = await manifests.linked(live)
  const counts = { blocks: 0, manifestBlocks: 0, used: 0 }
  const unlinked = async function * (family: Family, count: 'used'): AsyncGenerator<Op> {
    for await (const key of db.keys(family.range)) {
      if (live.has(family.id(key))) continue
      counts[count]++
      yield { type: 'del', key }
    }
  }
  // Stages: each family's keys scanned, the orphans among them deleted a batch at a time.
  await writeInBatches(db, (async function * (): AsyncGenerator<Op> {
    for await (const key of db.keys(BLOCK.range)) {
      if (live.has(BLOCK.layer(key))) continue
      counts.blocks++
      yield { type: 'del', key }
    }
    for await (const key of db.keys(MBLOCK.range)) {
      // A commit writing its manifest may link blocks that look orphaned now.
      if (manifests.inFlight > 0) {
        leftovers.sweepAtNextOpen = true
        break
      }
      if (linked.has(MBLOCK.id(key))) continue
      counts.manifestBlocks++
      yield { type: 'del', key }
    }
    yield * unlinked(USED, 'used')
    yield * unlinked(FPRINT, 'used')
  })())
  if (counts.blocks + counts.manifestBlocks + counts.used > 0) d.log.warn(counts, 'swept index keys that belonged to no layer')
  return counts
}

/** Reads every content block of a layer dir at its planned location and checks its hash. */
function verifyContent (dir: string, plan: IndexPlan): void {
  for (const loc of plan.locations) {
    const bytes = readRange(`${dir}/${loc.path}`, loc.offset, loc.length)
    verifyBlock(CID.parse(loc.cid), bytes)
  }
}

/**
 * Indexes the layer dirs from scratch: a dir that packs to its own name is a
 * layer (its origin is no longer known, so the peer policy applies to it from
 * now on); any other is removed.
 */
async function rebuildIndex (d: RecoverDeps): Promise<void> {
  const { log, dirs } = d
  let kept = 0
  let dropped = 0
  for (const name of readdirSync(`${dirs.dataDir}/layers`)) {
    try {
      const found: Located[] = []
      const packed = await packTree(dirs.layer(name), {
        pool: d.workers(),
        ...(d.inlineMax !== undefined ? { inlineMax: d.inlineMax } : {}),
        onBlock: (b) => found.push(b)
      })
      if (packed.root.toString() !== name) throw new CommitError(`its content packs to ${packed.root.toString()}`)
      const plan: IndexPlan = { locations: found, entries: packed.count, size: packed.size, blocks: packed.contentBlocks }
      const lists = d.manifests.stream()
      let indexed = false
      try {
        for (const b of packed.blocks) lists.add(b)
        await lists.flush()
        await d.installer.writeIndex(name, plan, { untrusted: true }, 'commit')
        indexed = true
      } finally {
        await lists.end(indexed)
      }
      kept++
    } catch (err) {
      dropped++
      log.warn({ err, layer: name }, 'dropping a layer dir that does not verify while rebuilding the index')
      try {
        dirs.hide(name)
      } catch (e) {
        log.warn({ err: e, layer: name }, 'cannot remove a layer dir')
      }
    }
  }
  log.warn({ kept, dropped }, 'rebuilt the index from the layer dirs')
}

/**
 * Copies the records (signed, checked by whoever reads them) that LevelDB's
 * repair can still find in a quarantined index, working on a copy so that the
 * quarantined files stay as they were found. Best effort: what cannot be read is lost.
 */
export async function salvageRecords (d: Pick<RecoverDeps, 'db' | 'log' | 'dirs'>, quarantined: string): Promise<number> {
  const staging = d.dirs.staging()
  const copy = `${staging}/index`
  let n = 0
  try {
    await execFileP('cp', ['-a', '--', quarantined, copy])
    await ClassicLevel.repair(copy)
    const old = new ClassicLevel<string, Uint8Array>(copy, { keyEncoding: 'utf8', valueEncoding: 'view', createIfMissing: false })
    await old.open()
    try {
      const records = async function * (): AsyncGenerator<Op> {
        for await (const [key, value] of old.iterator(RECORD.range)) {
          n++
          yield { type: 'put', key, value }
        }
      }
      await writeInBatches(d.db, records())
    } finally {
      await old.close()
    }
    d.log.warn({ records: n, from: quarantined }, 'salvaged records from the quarantined index')
  } catch (err) {
    d.log.warn({ err, records: n, from: quarantined }, 'could not salvage the records of the quarantined index')
  } finally {
    removeTree(staging)
  }
  return n
}
