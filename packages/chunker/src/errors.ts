import { StrataError } from '@strata/errors'

/** Base of every error this package throws; callers branch on `code`. */
export class ChunkerError extends StrataError {
  override name = 'ChunkerError'
  /** The entry path concerned, relative to the layer root, when there is one. */
  readonly path: string | undefined
  constructor (code: string, message: string, opts?: { path?: string, cause?: unknown }) {
    super(code, opts?.path !== undefined ? `${message}: ${JSON.stringify(opts.path)}` : message, { cause: opts?.cause })
    this.path = opts?.path
  }
}

/** A manifest (or one of its blocks) breaks the format: bad shape, order, limits or names. */
export class InvalidManifestError extends ChunkerError {
  override name = 'InvalidManifestError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_INVALID_MANIFEST', message, opts)
  }
}

/** An entry would write outside the target, through a symlink, or over another entry. */
export class UnsafeEntryError extends ChunkerError {
  override name = 'UnsafeEntryError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_UNSAFE_ENTRY', message, opts)
  }
}

/** The entry is valid but refused by the materialization policy (device node from a peer...). */
export class PolicyError extends ChunkerError {
  override name = 'PolicyError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_POLICY', message, opts)
  }
}

/** The directory being packed holds something the layer format cannot carry. */
export class UnsupportedEntryError extends ChunkerError {
  override name = 'UnsupportedEntryError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_UNSUPPORTED_ENTRY', message, opts)
  }
}

/** Block bytes do not hash to their CID. */
export class BlockMismatchError extends ChunkerError {
  override name = 'BlockMismatchError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_BLOCK_MISMATCH', message, opts)
  }
}

/** Writing the layer failed (disk full, permissions...); the partial output was removed. */
export class MaterializeError extends ChunkerError {
  override name = 'MaterializeError'
  constructor (message: string, opts?: { path?: string, cause?: unknown }) {
    super('ERR_MATERIALIZE', message, opts)
  }
}

/** The caller's signal aborted the operation. */
export class AbortError extends ChunkerError {
  override name = 'AbortError'
  constructor (opts?: { cause?: unknown }) {
    super('ABORT_ERR', 'the operation was aborted', opts)
  }
}
