import { StrataError } from '@strata/errors'

/** Base of every error this package throws; callers branch on `code`, never on the message. */
export class RecordsError extends StrataError {
  override name = 'RecordsError'
}

/** The node identity key file cannot be read, created or used as an ed25519 key. */
export class IdentityError extends RecordsError {
  override name = 'IdentityError'
  readonly path: string
  constructor (path: string, opts?: { cause?: unknown }) {
    super('ERR_IDENTITY', `cannot use the identity key ${path}: ${(opts?.cause as Error | undefined)?.message ?? 'invalid key'}`, opts)
    this.path = path
  }
}

/** A writer key file cannot be read or is not a writer key. */
export class WriterKeyError extends RecordsError {
  override name = 'WriterKeyError'
  readonly path: string
  constructor (path: string, detail: string, opts?: { cause?: unknown }) {
    super('ERR_WRITER_KEY', `${path}: ${detail}`, opts)
    this.path = path
  }
}

/** Why a record was refused; stable, used as a metric label. */
export type RecordRejectReason =
  | 'malformed' | 'too-large' | 'unsigned' | 'version' | 'bad-signature' | 'untrusted-signer' | 'wrong-key' | 'old-epoch' | 'wrong-scope'

/** A record does not decode, verify or match its key, or the reader's policy refuses it. */
export class RecordInvalidError extends RecordsError {
  override name = 'RecordInvalidError'
  readonly key: string
  readonly reason: RecordRejectReason
  constructor (key: string, reason: RecordRejectReason, detail: string, opts?: { cause?: unknown }) {
    super('ERR_RECORD_INVALID', `record for ${key}: ${detail} (${reason})`, opts)
    this.key = key
    this.reason = reason
  }
}

/** A claim does not decode, verify or match its key, or the reader's policy refuses it (the reasons of a record's refusal). */
export class ClaimInvalidError extends RecordsError {
  override name = 'ClaimInvalidError'
  readonly key: string
  readonly reason: RecordRejectReason
  constructor (key: string, reason: RecordRejectReason, detail: string, opts?: { cause?: unknown }) {
    super('ERR_CLAIM_INVALID', `claim for ${key}: ${detail} (${reason})`, opts)
    this.key = key
    this.reason = reason
  }
}
