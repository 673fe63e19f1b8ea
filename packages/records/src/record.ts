import { decodeSigned, signingKey } from './envelope.ts'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { RecordInvalidError } from './errors.ts'
import type { RecordRejectReason } from './errors.ts'
import { verifySignature } from './identity.ts'
import { envObject, envProblem, isEnvLine } from './env.ts'
import type { Identity } from './identity.ts'
import type { WriterKey } from './writer-key.ts'
import type { RecordPolicy } from './trust.ts'

/**
 * Bumped when the record body layout changes. Format 2 added `scope` and `epoch`,
 * format 3 `writer` (records signed by a named writer key). Format 2 records are
 * still read (they are format 3 records signed by their producer's identity);
 * format 1 records are refused (reason `version`).
 */
export const RECORD_FORMAT = 3
/** Domain separation: a signature over a record can never be mistaken for one over anything else, nor for another format. */
export const RECORD_DOMAIN = 'strata/record/v3\n'
/** The formats a reader opens, with the domain string each was signed under. */
const DOMAINS: ReadonlyMap<unknown, string> = new Map([[2, 'strata/record/v2\n'], [3, RECORD_DOMAIN]])
/** The scope a record is written in when none is configured. */
export const DEFAULT_SCOPE = 'default'
/** Scopes a reader may name at most (its own, then fallbacks). */
export const MAX_READ_SCOPES = 16
/** A signed record is a few hundred bytes plus its env lines; anything over this is not one. */
export const MAX_RECORD_SIZE = 256 * 1024

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
  /** Milliseconds since the epoch (informational: trust decisions use `epoch`, not clocks). */
  created: number
  /** Peer id of the node that produced the layer (where it is); the signer too unless `writer` is set. */
  producer: string
  /** Where the record was written, e.g. a branch: `main`, `pr/123`. */
  scope: string
  /** The trust epoch its writer was configured with; readers refuse records older than theirs. */
  epoch: number
  /** The writer key that signed it, `NAME-N:BASE64`; null when the producer's identity signed it (always null in format 2). */
  writer: string | null
}

/** Who signed a record: its writer key's id, else its producer's peer id. What trust policies name. */
export const signerOf = (record: Pick<StepRecord, 'producer' | 'writer'>): string => record.writer ?? record.producer

const SCOPE = /^[A-Za-z0-9._+-]+(?:\/[A-Za-z0-9._+-]+)*$/

/** A scope is 1-128 characters of letters, digits, `._+-`, with `/` between non-empty parts. Throws TypeError otherwise. */
export function checkScope (scope: unknown): string {
  if (typeof scope !== 'string' || scope.length > 128 || !SCOPE.test(scope) || scope.split('/').some((p) => p === '.' || p === '..')) {
    throw new TypeError(`scope ${JSON.stringify(scope)} must be 1-128 characters of letters, digits, ".", "_", "+", "-", with "/" between parts (e.g. main, pr/123)`)
  }
  return scope
}

/** An epoch is a whole number from 0 to 2^32 - 1. Throws TypeError otherwise. */
export function checkEpoch (epoch: unknown): number {
  if (typeof epoch !== 'number' || !Number.isInteger(epoch) || epoch < 0 || epoch > 0xffffffff) {
    throw new TypeError(`epoch must be a whole number from 0 to 4294967295, got ${JSON.stringify(epoch)}`)
  }
  return epoch
}

/** Where records live in the store's record space: one per (key, scope), `runner/record/<key>/<scope>`. */
export const recordKey = (key: CID | string, scope: string): string => `runner/record/${key.toString()}/${scope}`
export const RECORD_PREFIX = 'runner/record/'

/** The exact bytes a record's signature covers: utf8(domain) || body, the domain of format `v` (default this one). */
export function signedBytes (body: Uint8Array, v: number = RECORD_FORMAT): Uint8Array {
  const prefix = Buffer.from(DOMAINS.get(v) ?? RECORD_DOMAIN, 'utf8')
  const out = new Uint8Array(prefix.length + body.length)
  out.set(prefix)
  out.set(body, prefix.length)
  return out
}

/**
 * Signed envelope: dag-cbor `{ body, sig }` where `body` is the dag-cbor encoding
 * (canonical: map keys sorted) of the StepRecord and `sig` is the signer's
 * ed25519 signature over utf8(RECORD_DOMAIN) || body. The signer is the writer key
 * the record names (`writer`), or the producer's identity when it names none; its
 * public key is inside the id, so verifying needs nothing but the envelope.
 */
export function signRecord (record: StepRecord, signer: Identity | WriterKey): Uint8Array {
  if ('peerId' in signer) {
    if (record.producer !== signer.peerId) throw new TypeError('record.producer must be the signing identity')
    if (record.writer !== null) throw new TypeError('a record signed by the node identity names no writer key')
  } else if (record.writer !== signer.id) {
    throw new TypeError('record.writer must be the signing writer key')
  }
  if (record.v !== RECORD_FORMAT) throw new TypeError(`record.v must be ${RECORD_FORMAT}`)
  checkScope(record.scope)
  checkEpoch(record.epoch)
  const body = dagCbor.encode(record)
  const sig = signer.sign(signedBytes(body))
  return dagCbor.encode({ body, sig })
}

/**
 * Decodes and verifies an envelope for `key` under `policy`, in this order:
 * decodes (`malformed`), carries a signature (`unsigned`), has this format
 * (`version`), the signature verifies against the producer's key (`bad-signature`),
 * its fields have their types and its env lines are NAME=value (`malformed`), its
 * env fits what exec takes (`too-large`), the producer is trusted to write its
 * scope (`untrusted-signer`), it is about `key` (`wrong-key`), it
 * was written in the policy's epoch or later (`old-epoch`), in one of its scopes
 * (`wrong-scope`). Throws RecordInvalidError with that `reason`.
 */
export function openRecord (key: CID, bytes: Uint8Array, policy: RecordPolicy): StepRecord {
  const k = key.toString()
  const fail = (reason: RecordRejectReason, detail: string, cause?: unknown): RecordInvalidError =>
    new RecordInvalidError(k, reason, detail, cause !== undefined ? { cause } : undefined)
  const env = decodeSigned<StepRecord>(bytes, fail)
  const body = env.body
  let record = env.value
  if (!DOMAINS.has(record.v)) throw fail('version', `has format ${String(record.v)}, this reader reads formats ${[...DOMAINS.keys()].join(' and ')}`)
  if (typeof record.producer !== 'string') throw fail('malformed', 'has no producer')
  // Format 2 has no writer field: its producer signed it.
  const { signer, pub } = signingKey(record.v === 2 ? null : record.writer, record.producer, 'producer', fail)
  if (!verifySignature(pub, signedBytes(body, record.v), env.sig)) throw fail('bad-signature', `signature does not verify for ${signer.slice(0, 200)}`)
  if (CID.asCID(record.layer) === null || !Array.isArray(record.env) || !record.env.every((l) => typeof l === 'string') ||
    typeof record.scope !== 'string' || typeof record.epoch !== 'number' || !Number.isInteger(record.epoch)) {
    throw fail('malformed', 'is malformed')
  }
  if (!record.env.every(isEnvLine)) throw fail('malformed', 'has an env line that is not NAME=value')
  // Its env is exported to the steps above it: one that exec would refuse must never be a hit.
  const envTooLarge = envProblem(envObject(record.env))
  if (envTooLarge !== undefined) throw fail('too-large', `env: ${envTooLarge.reason}`)
  if (record.v === 2) record = { ...record, writer: null }
  if (!policy.trusts(signer, record.scope)) throw fail('untrusted-signer', `signed by ${signer}, who is not trusted to write scope ${record.scope}`)
  if (CID.asCID(record.key)?.equals(key) !== true) throw fail('wrong-key', 'is about another key')
  const epoch = policy.epoch ?? 0
  if (record.epoch < epoch) throw fail('old-epoch', `was written in epoch ${record.epoch}, before epoch ${epoch}`)
  if (policy.scopes !== undefined && !policy.scopes.includes(record.scope)) throw fail('wrong-scope', `is in scope ${JSON.stringify(record.scope)}, not in ${policy.scopes.join(', ')}`)
  return record
}

/** The key and scope a signed envelope claims, before any check. Throws TypeError for anything that is not an envelope with a key and a valid scope. */
export function claimedKey (bytes: Uint8Array): { key: CID, scope: string } {
  const c = claimed(bytes)
  return { key: c.key, scope: checkScope(c.scope) }
}

function claimed (bytes: Uint8Array): { key: CID, scope: unknown } {
  let key: CID | null
  let scope: unknown
  try {
    const env = dagCbor.decode<{ body?: unknown }>(bytes)
    if (!(env.body instanceof Uint8Array)) throw new TypeError('no body')
    const body = dagCbor.decode<{ key?: unknown, scope?: unknown }>(env.body)
    key = CID.asCID(body.key)
    scope = body.scope
  } catch (err) {
    throw new TypeError('not a signed record', { cause: err })
  }
  if (key === null) throw new TypeError('not a signed record: no key')
  return { key, scope }
}

/**
 * Checks an envelope's size (`too-large` over MAX_RECORD_SIZE), then opens it for
 * `key` (by default the key it claims) under `policy`: see openRecord. Throws
 * RecordInvalidError.
 */
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
