import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { checkScope, claimedKey as claimed, MAX_READ_SCOPES } from '@strata/records'
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
/** A record request: a CID and up to 16 scopes of up to 128 bytes. */
export const MAX_REQUEST_SIZE = 4096

/** The key and scope a signed envelope claims, before any check; a ProtocolViolationError for anything else. */
export function claimedKey (bytes: Uint8Array): { key: CID, scope: string } {
  try {
    return claimed(bytes)
  } catch (err) {
    throw new ProtocolViolationError('not a signed record', { cause: err })
  }
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
