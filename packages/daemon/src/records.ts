import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { checkScope, MAX_READ_SCOPES, openRecord, RECORD_PREFIX, recordKey, RecordInvalidError, writerTrust } from '@strata/runner'
import type { RecordPolicy, StepRecord } from '@strata/runner'
import { ProtocolViolationError } from './errors.ts'

/**
 * `/strata/records/2.0.0`: the client sends one frame, dag-cbor `{ key, scopes }`
 * (1 to 16 scopes, at most MAX_REQUEST_SIZE bytes); the server answers one frame
 * per scope, in order: the signed envelope it holds for (key, scope), or empty.
 * Version 1 asked for a key alone; scopes made it a new protocol.
 */
export const RECORDS_PROTOCOL = '/strata/records/2.0.0'
export const RECORDS_TOPIC = '/strata/records/1'
/** "I am fetching layer <root>": peers fetching the same layer serve each other. */
export const FETCHING_TOPIC = '/strata/fetching/1'
/** A signed record is a few hundred bytes plus its env lines; anything over this is not one. */
export const MAX_RECORD_SIZE = 256 * 1024
/** A record request: a CID and up to 16 scopes of up to 128 bytes. */
export const MAX_REQUEST_SIZE = 4096

export { RECORD_PREFIX, recordKey }

/**
 * Who may write records, where, and since when: a fixed list of writer entries
 * (`PEERID`, or `PEERID@GLOB` for the scopes GLOB matches; undefined: anyone whose
 * signature checks out; this node always) and an epoch (records of earlier epochs
 * are disowned).
 */
export class TrustPolicy implements RecordPolicy {
  /** The writer entries as given, or undefined for "any signer". */
  readonly writers: readonly string[] | undefined
  readonly self: string
  readonly epoch: number
  readonly #trusts: ((peer: string, scope: string) => boolean) | undefined
  constructor (self: string, writers: readonly string[] | undefined, epoch = 0) {
    this.self = self
    this.writers = writers !== undefined ? [...new Set(writers)] : undefined
    this.#trusts = writers !== undefined ? writerTrust(writers) : undefined
    this.epoch = epoch
  }

  trusts (peer: string, scope: string): boolean {
    return peer === this.self || this.#trusts === undefined || this.#trusts(peer, scope)
  }

  /** This policy, for a reader that uses only `scopes`. */
  reading (scopes: readonly string[]): RecordPolicy {
    return { trusts: (p, s) => this.trusts(p, s), epoch: this.epoch, scopes }
  }
}

function claimed (bytes: Uint8Array): { key: CID, scope: unknown } {
  const env = dagCbor.decode<{ body?: unknown }>(bytes)
  if (!(env.body instanceof Uint8Array)) throw new Error('no body')
  const body = dagCbor.decode<{ key?: unknown, scope?: unknown }>(env.body)
  const key = CID.asCID(body.key)
  if (key === null) throw new Error('no key')
  return { key, scope: body.scope }
}

/** The key and scope a signed envelope claims, before any check. */
export function claimedKey (bytes: Uint8Array): { key: CID, scope: string } {
  try {
    const c = claimed(bytes)
    return { key: c.key, scope: checkScope(c.scope) }
  } catch (err) {
    throw new ProtocolViolationError('not a signed record', { cause: err })
  }
}

/** Verifies an envelope (size, signature, format, key, signer, epoch, scope) under `policy`; throws RecordInvalidError. */
export function verifyEnvelope (bytes: Uint8Array, policy: RecordPolicy, key?: CID): StepRecord {
  if (bytes.length > MAX_RECORD_SIZE) throw new RecordInvalidError(key?.toString() ?? '?', 'too-large', `is ${bytes.length} bytes, over ${MAX_RECORD_SIZE}`)
  let k = key
  if (k === undefined) {
    // Only the key is needed here: openRecord gives the precise reason for the rest (a format 1 record has no scope: `version`).
    try {
      k = claimed(bytes).key
    } catch (err) {
      throw new RecordInvalidError('?', 'malformed', 'names no key', { cause: err })
    }
  }
  return openRecord(k, bytes, policy)
}

export interface RecordRequest {
  key: CID
  scopes: string[]
}

export function encodeRecordRequest (req: RecordRequest): Uint8Array {
  return dagCbor.encode({ key: req.key, scopes: req.scopes })
}

/** Throws ProtocolViolationError for anything but a well-formed request. */
export function decodeRecordRequest (bytes: Uint8Array): RecordRequest {
  if (bytes.length > MAX_REQUEST_SIZE) throw new ProtocolViolationError(`record request of ${bytes.length} bytes, over ${MAX_REQUEST_SIZE}`)
  try {
    const m = dagCbor.decode<{ key?: unknown, scopes?: unknown }>(bytes)
    const key = CID.asCID(m.key)
    if (key === null) throw new Error('no key')
    if (!Array.isArray(m.scopes) || m.scopes.length === 0 || m.scopes.length > MAX_READ_SCOPES) throw new Error(`1 to ${MAX_READ_SCOPES} scopes wanted`)
    return { key, scopes: m.scopes.map(checkScope) }
  } catch (err) {
    throw new ProtocolViolationError('malformed record request', { cause: err })
  }
}
