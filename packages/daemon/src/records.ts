import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { openRecord, RecordInvalidError } from '@strata/runner'
import type { StepRecord } from '@strata/runner'
import { ProtocolViolationError } from './errors.ts'

export const RECORDS_PROTOCOL = '/strata/records/1.0.0'
export const RECORDS_TOPIC = '/strata/records/1'
/** "I am fetching layer <root>": peers fetching the same layer serve each other. */
export const FETCHING_TOPIC = '/strata/fetching/1'
/** A signed record is a few hundred bytes plus its env lines; anything over this is not one. */
export const MAX_RECORD_SIZE = 256 * 1024

/** Where the runner keeps records in the store's record space. */
export const recordKey = (key: CID | string): string => `runner/record/${key.toString()}`
export const RECORD_PREFIX = 'runner/record/'

/** Who may write records: a fixed list, or (undefined) anyone whose signature checks out. */
export class TrustPolicy {
  readonly writers: ReadonlySet<string> | undefined
  readonly self: string
  constructor (self: string, writers: readonly string[] | undefined) {
    this.self = self
    this.writers = writers !== undefined ? new Set(writers) : undefined
  }

  trusts (peer: string): boolean {
    return peer === this.self || this.writers === undefined || this.writers.has(peer)
  }
}

/** The key a signed envelope claims to be about, before any check. */
export function claimedKey (bytes: Uint8Array): CID {
  try {
    const env = dagCbor.decode<{ body?: unknown }>(bytes)
    if (!(env.body instanceof Uint8Array)) throw new Error('no body')
    const body = dagCbor.decode<{ key?: unknown }>(env.body)
    const key = CID.asCID(body.key)
    if (key === null) throw new Error('no key')
    return key
  } catch (err) {
    throw new ProtocolViolationError('not a signed record', { cause: err })
  }
}

/** Verifies an envelope (signature, format, key) under `policy`; throws RecordInvalidError. */
export function verifyEnvelope (bytes: Uint8Array, policy: TrustPolicy, key?: CID): StepRecord {
  if (bytes.length > MAX_RECORD_SIZE) throw new RecordInvalidError(key?.toString() ?? '?', `is ${bytes.length} bytes, over ${MAX_RECORD_SIZE}`)
  const k = key ?? claimedKey(bytes)
  // openRecord only asks the set `has`: a policy with no list trusts every signer.
  return openRecord(k, bytes, { has: (p: string) => policy.trusts(p) } as unknown as ReadonlySet<string>)
}
