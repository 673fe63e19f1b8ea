import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { RecordInvalidError } from './errors.ts'
import { publicKeyFromPeerId, verifySignature } from './identity.ts'
import type { Identity } from './identity.ts'

/** Bumped when the record body layout changes. */
export const RECORD_FORMAT = 1
/** Domain separation: a signature over a record can never be mistaken for one over anything else. */
export const RECORD_DOMAIN = 'strata/record/v1\n'

/** What a step's key resolves to: the layer it produced and its $STRATA_ENV lines. */
export interface StepRecord {
  v: number
  /** The step's cache key. */
  key: CID
  /** The key of the step below, or null on the base (lets exec() rebuild the chain). */
  parent: CID | null
  /** Root CID of the layer the step produced. */
  layer: CID
  /** Bytes of regular-file content in the layer. */
  size: number
  /** NAME=value lines the step appended to $STRATA_ENV (its own, not inherited ones). */
  env: string[]
  /** Milliseconds since the epoch. */
  created: number
  /** Peer id of the signer. */
  producer: string
}

// Keys under which the runner keeps things in the store's record space.
export const recordKey = (key: CID | string): string => `runner/record/${key.toString()}`
export const descriptorKey = (key: CID | string): string => `runner/desc/${key.toString()}`
export const lastKey = (chain: string): string => `runner/last/${chain}`

/**
 * Signed envelope: dag-cbor `{ body, sig }` where `body` is the dag-cbor encoding of
 * the StepRecord and `sig` is the producer's ed25519 signature over
 * utf8(RECORD_DOMAIN) || body. The signer's public key is inside its peer id.
 */
export function signRecord (record: StepRecord, identity: Identity): Uint8Array {
  if (record.producer !== identity.peerId) throw new TypeError('record.producer must be the signing identity')
  const body = dagCbor.encode(record)
  const sig = identity.sign(signedBytes(body))
  return dagCbor.encode({ body, sig })
}

/**
 * Decodes and verifies an envelope for `key`: well-formed, signed by its producer,
 * the producer trusted, and about `key`. Throws RecordInvalidError otherwise.
 */
export function openRecord (key: CID, bytes: Uint8Array, trusted: ReadonlySet<string>): StepRecord {
  const k = key.toString()
  let body: Uint8Array
  let sig: Uint8Array
  let record: StepRecord
  try {
    const env = dagCbor.decode<{ body: unknown, sig: unknown }>(bytes)
    if (!(env.body instanceof Uint8Array) || !(env.sig instanceof Uint8Array)) throw new Error('not a signed envelope')
    body = env.body
    sig = env.sig
    record = dagCbor.decode<StepRecord>(body)
  } catch (err) {
    throw new RecordInvalidError(k, 'does not decode', { cause: err })
  }
  if (record.v !== RECORD_FORMAT) throw new RecordInvalidError(k, `has format ${String(record.v)}, expected ${RECORD_FORMAT}`)
  if (typeof record.producer !== 'string') throw new RecordInvalidError(k, 'has no producer')
  const pub = publicKeyFromPeerId(record.producer)
  if (pub === undefined) throw new RecordInvalidError(k, `producer ${record.producer} is not an ed25519 peer id`)
  if (!verifySignature(pub, signedBytes(body), sig)) throw new RecordInvalidError(k, 'bad signature')
  if (!trusted.has(record.producer)) throw new RecordInvalidError(k, `signed by ${record.producer}, who is not trusted`)
  if (CID.asCID(record.key)?.equals(key) !== true) throw new RecordInvalidError(k, 'is about another key')
  if (CID.asCID(record.layer) === null || !Array.isArray(record.env) || !record.env.every((l) => typeof l === 'string')) {
    throw new RecordInvalidError(k, 'is malformed')
  }
  return record
}

function signedBytes (body: Uint8Array): Uint8Array {
  const prefix = Buffer.from(RECORD_DOMAIN, 'utf8')
  const out = new Uint8Array(prefix.length + body.length)
  out.set(prefix)
  out.set(body, prefix.length)
  return out
}
