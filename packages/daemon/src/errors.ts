import { StrataError } from '@strata/errors'

/** Base of every error this package throws; callers branch on `code`, never on the message. */
export class DaemonError extends StrataError {
  override name = 'DaemonError'
}

/** A peer sent bytes that are not a well-formed block-exchange or record message. */
export class ProtocolViolationError extends DaemonError {
  override name = 'ProtocolViolationError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_PROTOCOL_VIOLATION', message, opts)
  }
}

/** A peer exceeded one of the limits (message size, wants, streams). */
export class PeerLimitError extends DaemonError {
  override name = 'PeerLimitError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_PEER_LIMIT', message, opts)
  }
}

/** A peer took longer than allowed to answer, or went idle. */
export class PeerTimeoutError extends DaemonError {
  override name = 'PeerTimeoutError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_PEER_TIMEOUT', message, opts)
  }
}

/** No provider could give a block (all said "don't have", failed, or are banned). */
export class BlockUnavailableError extends DaemonError {
  override name = 'BlockUnavailableError'
  readonly cid: string
  constructor (cid: string, tried: number, opts?: { cause?: unknown }) {
    super('ERR_BLOCK_UNAVAILABLE', `no provider could give block ${cid} (${tried} tried)`, opts)
    this.cid = cid
  }
}

/** No record for a key anywhere the daemon looked, or none that it trusts. */
export class RecordNotFoundError extends DaemonError {
  override name = 'RecordNotFoundError'
  readonly reason: string
  constructor (key: string, reason: string, opts?: { cause?: unknown }) {
    super('ERR_RECORD_NOT_FOUND', `no usable record for key ${key}: ${reason}`, opts)
    this.reason = reason
  }
}

/** No peer is known to hold the layer. */
export class NoProvidersError extends DaemonError {
  override name = 'NoProvidersError'
  constructor (root: string, opts?: { cause?: unknown }) {
    super('ERR_NO_PROVIDERS', `no peer is known to hold layer ${root}`, opts)
  }
}

/** A daemon option is invalid. */
export class DaemonConfigError extends DaemonError {
  override name = 'DaemonConfigError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_DAEMON_CONFIG', message, opts)
  }
}

/** The node cannot listen on one of its addresses; `cause` is the system's error (EADDRINUSE...). */
export class ListenError extends DaemonError {
  override name = 'ListenError'
  readonly address: string
  constructor (address: string, opts: { cause: unknown }) {
    const sys = (opts.cause as { code?: unknown } | undefined)?.code
    const why = sys === 'EADDRINUSE' ? 'the address is in use (another process listens on it)'
      : sys === 'EADDRNOTAVAIL' ? 'this host has no such address'
        : sys === 'EACCES' ? 'permission denied' : (opts.cause as Error | undefined)?.message ?? String(opts.cause)
    super('ERR_LISTEN', `cannot listen on ${address}: ${why}`, opts)
    this.address = address
  }
}

/** A control request is malformed (not a JSON object, a missing or bad field, too large): the control server answers 400 with it. */
export class BadRequestError extends DaemonError {
  override name = 'BadRequestError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_BAD_REQUEST', message, opts)
  }
}

/** The control socket answered with an error, or could not be reached. */
export class ControlError extends DaemonError {
  override name = 'ControlError'
  readonly status: number
  constructor (code: string, status: number, message: string, opts?: { cause?: unknown }) {
    super(code, message, opts)
    this.status = status
  }
}

/** A claim the control client names is not live on this node (it ended: released, or its lease ran out). */
export class ClaimNotFoundError extends DaemonError {
  override name = 'ClaimNotFoundError'
  readonly id: string
  constructor (id: string, opts?: { cause?: unknown }) {
    super('ERR_CLAIM_NOT_FOUND', `no live claim ${id} on this node (released, or its lease ran out)`, opts)
    this.id = id
  }
}

/** Too many control clients wait on claims at once. */
export class ClaimsBusyError extends DaemonError {
  override name = 'ClaimsBusyError'
  constructor (message: string, opts?: { cause?: unknown }) {
    super('ERR_CLAIMS_BUSY', message, opts)
  }
}
