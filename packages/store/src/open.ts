import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { resolve } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { pino } from 'pino'
import type { Logger } from 'pino'
import type { FsPool } from '@strata/chunker'
import type { Index } from './keys.ts'
import { K_VERSION } from './keys.ts'
import { IndexCorruptError, StoreVersionError } from './errors.ts'
import { acquireLock } from './lock.ts'
import { LayerStore } from './store.ts'
import type { LocalStore } from './store.ts'
import type { Store, StoreInit } from './types.ts'

/** Bumped whenever the index layout changes; a store of another version is refused. */
export const STORE_FORMAT = '1'

/** By default a layer's last use is written at most this often (serving blocks touches it on every read). */
const TOUCH_EVERY_MS = 60_000
/** Quarantined indexes kept for inspection; older ones are deleted. */
const KEEP_QUARANTINED = 3
/** LevelDB takes any size; below 64 KiB a table is written every few puts. */
const MIN_INDEX_WRITE_BUFFER = 64 * 1024

export interface OpenStoreInit extends StoreInit {
  logger?: Logger
  /** Files up to this size are packed into the manifest. Default: the format's DEFAULT_INLINE_MAX. */
  inlineMax?: number
  /** A layer's last use is written at most this often. Default 60 000 ms. */
  touchEveryMs?: number
  /**
   * Bytes the index's LevelDB keeps in memory before it writes a table (its
   * `writeBufferSize`). Default LevelDB's own, 4 MiB. A manifest's blocks go to the
   * index, and a large tree has many; with a larger buffer they make fewer
   * level-0 tables and so fewer compactions rewriting them. The daemon, which
   * restores layers from peers while it serves others, sets 16 MiB (doc/DECISIONS.md).
   */
  indexWriteBufferBytes?: number
  /**
   * Write the index's memtable out to a table this often, so that what it holds
   * in memory is bounded by time and not only by the write buffer (`IndexFlusher`).
   * Default: only when the write buffer fills. The daemon sets 5 minutes.
   */
  indexFlushEveryMs?: number
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

/**
 * Opens (creating if needed) the store under `dataDir`. An index that cannot be
 * opened or read, or that contradicts itself, is moved aside (kept for
 * inspection, its path logged) and rebuilt from the layer dirs.
 */
export async function openStore (init: OpenStoreInit): Promise<Store & LocalStore> {
  const { dataDir, log } = prepare(init)
  const release = await acquireLock(dataDir, { wait: init.wait ?? true, signal: init.signal, log })
  return await openLocked(dataDir, log, release, init)
}

/** Normalizes the options both openers share; returns the data dir (absolute) and the store's logger. */
export function prepare (init: OpenStoreInit): { dataDir: string, log: Logger } {
  const wb = init.indexWriteBufferBytes
  if (wb !== undefined && !(Number.isSafeInteger(wb) && wb >= MIN_INDEX_WRITE_BUFFER)) {
    throw new TypeError(`indexWriteBufferBytes must be an integer of at least ${MIN_INDEX_WRITE_BUFFER} bytes, got ${wb}`)
  }
  const every = init.indexFlushEveryMs
  if (every !== undefined && !(Number.isFinite(every) && every > 0)) throw new TypeError(`indexFlushEveryMs must be a positive number of milliseconds, got ${every}`)
  const log = (init.logger ?? pino({ level: 'silent' })).child({ component: 'store' })
  // Layer paths handed out (and mounted as lower dirs) must not depend on the cwd.
  const dataDir = resolve(init.dataDir)
  mkdirSync(`${dataDir}/layers`, { recursive: true })
  mkdirSync(`${dataDir}/staging`, { recursive: true })
  return { dataDir, log }
}

/**
 * Opens the index of a data dir whose lock the caller holds, and makes it
 * consistent (recover.ts); `release` goes with the store (its close calls it),
 * or is called here when the open fails.
 */
export async function openLocked (dataDir: string, log: Logger, release: () => void, init: OpenStoreInit & { workers?: () => FsPool }): Promise<LayerStore> {
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

async function openIndex (dataDir: string, log: Logger, release: () => void, init: OpenStoreInit & { workers?: () => FsPool }): Promise<LayerStore> {
  // Opened without CURRENT, LevelDB would start a new index over the old files and delete them.
  const files = existsSync(`${dataDir}/index`) ? readdirSync(`${dataDir}/index`) : []
  if (files.some((f) => /\.(ldb|sst|log)$/.test(f)) && !files.includes('CURRENT')) throw new IndexCorruptError('the index has table files but no CURRENT file')
  const db: Index = new ClassicLevel<string, Uint8Array>(`${dataDir}/index`, { keyEncoding: 'utf8', valueEncoding: 'view' })
  try {
    await db.open(init.indexWriteBufferBytes !== undefined ? { writeBufferSize: init.indexWriteBufferBytes } : {})
  } catch (err) {
    if (manifestMissing(`${dataDir}/index`)) throw new IndexCorruptError('the index names a MANIFEST file that is not there', { cause: err })
    throw err
  }
  const store = new LayerStore({
    dataDir,
    db,
    log,
    release,
    inlineMax: init.inlineMax,
    touchEveryMs: init.touchEveryMs ?? TOUCH_EVERY_MS,
    pool: init.pool,
    workers: init.workers,
    verity: init.verity ?? true,
    indexFlushEveryMs: init.indexFlushEveryMs
  })
  try {
    const fresh = await checkVersion(db, dataDir)
    await store.recover(fresh && readdirSync(`${dataDir}/layers`).length > 0)
  } catch (err) {
    await store.closeIndex()
    throw err
  }
  return store
}

/**
 * Refuses another format version. Returns whether the index is new; an index
 * with entries but no version key is corrupt (a lost CURRENT file opens as empty
 * only after LevelDB made a new one, so "new" is also checked against the layer dirs).
 */
async function checkVersion (db: Index, dataDir: string): Promise<boolean> {
  const found = await db.get(K_VERSION)
  if (found === undefined) {
    for await (const _ of db.keys({ limit: 1 })) throw new IndexCorruptError(`the index of ${dataDir} has entries but no format version`)
    await db.put(K_VERSION, Buffer.from(STORE_FORMAT))
    return true
  }
  const text = Buffer.from(found).toString()
  if (text !== STORE_FORMAT) throw new StoreVersionError(dataDir, text, STORE_FORMAT)
  return false
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
