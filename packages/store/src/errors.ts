import { StrataError } from '@strata/errors'

/** Base of every error this package throws; callers branch on `code`. */
export class StoreError extends StrataError {
  override name = 'StoreError'
}

/** Another process holds the store and the caller asked not to wait. */
export class StoreLockedError extends StoreError {
  override name = 'StoreLockedError'
  constructor (dataDir: string) {
    super('ERR_STORE_LOCKED', `another strata process is using the store at ${dataDir}`)
  }
}

/** Another process held the store for longer than the caller would wait. */
export class StoreBusyError extends StoreError {
  override name = 'StoreBusyError'
  /** The process holding the store when the wait ended, when the kernel says. */
  readonly holder: { pid: number, command: string } | undefined
  readonly waitedMs: number
  constructor (dataDir: string, waitedMs: number, holder?: { pid: number, command: string }) {
    const who = holder === undefined ? 'another strata process' : `another strata process (pid ${holder.pid}${holder.command !== '' ? `: ${holder.command}` : ''})`
    super('ERR_STORE_BUSY', `${who} still holds ${dataDir} after ${Math.round(waitedMs) / 1000}s`)
    this.holder = holder
    this.waitedMs = waitedMs
  }
}

/** A call on a store that was closed. */
export class StoreClosedError extends StoreError {
  override name = 'StoreClosedError'
  constructor (dataDir: string) {
    super('ERR_STORE_CLOSED', `the store at ${dataDir} was closed`)
  }
}

/** The store on disk has another format version than this strata reads. */
export class StoreVersionError extends StoreError {
  override name = 'StoreVersionError'
  constructor (dataDir: string, found: string, expected: string) {
    super('ERR_STORE_VERSION', `the store at ${dataDir} has format version ${found}, this strata uses ${expected}: move it aside or use another --data-dir`)
  }
}

export class LayerNotFoundError extends StoreError {
  override name = 'LayerNotFoundError'
  constructor (root: string) {
    super('ERR_LAYER_NOT_FOUND', `no layer ${root} in the store`)
  }
}

export class BlockNotFoundError extends StoreError {
  override name = 'BlockNotFoundError'
  constructor (cid: string) {
    super('ERR_BLOCK_NOT_FOUND', `no block ${cid} in the store`)
  }
}

/** A block read from a layer does not hash to its CID; the layer was marked corrupt. */
export class BlockCorruptError extends StoreError {
  override name = 'BlockCorruptError'
  readonly layer: string
  constructor (cid: string, layer: string, opts?: { cause?: unknown }) {
    super('ERR_BLOCK_CORRUPT', `block ${cid} read from layer ${layer} does not match its hash; the layer is marked corrupt`, opts)
    this.layer = layer
  }
}

/** Capturing or restoring a layer failed; nothing was committed. */
export class CommitError extends StoreError {
  override name = 'CommitError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_COMMIT', message, opts)
  }
}

/** The index cannot be opened or read, or contradicts itself; openStore quarantines it and rebuilds from the layer dirs. */
export class IndexCorruptError extends StoreError {
  override name = 'IndexCorruptError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_INDEX_CORRUPT', message, opts)
  }
}
