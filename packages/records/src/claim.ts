import { decodeSigned, signingKey } from './envelope.ts'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { ClaimInvalidError } from './errors.ts'
import type { RecordRejectReason } from './errors.ts'
import { publicKeyFromPeerId, verifySignature } from './identity.ts'
import type { Identity } from './identity.ts'
import { checkEpoch, checkScope } from './record.ts'
import type { RecordPolicy } from './trust.ts'
import type { WriterKey } from './writer-key.ts'

/** Bumped when the claim body layout changes. */
export const CLAIM_FORMAT = 1
/** Domain separation: a claim's signature can never pass for a record's, nor a record's for a claim's. */
export const CLAIM_DOMAIN = 'strata/claim/v1\n'
/** A claim is a few hundred bytes: anything over this is not one. */
export const MAX_CLAIM_SIZE = 2048
/** Bytes in a claim id. */
export const CLAIM_ID_BYTES = 16
/** The longest lease a claim may ask for: a holder that dies is forgotten within this, whatever it asked. */
export const MAX_LEASE_MS = 60_000
/** Renewals a claim may carry at most (a sequence number is a whole number below this). */
export const MAX_CLAIM_SEQ = 0xffffffff

/**
 * "I am building `key`": announced by a node that missed a key and runs the step,
 * renewed (a higher `seq`) while it builds, released when it is done. Peers that miss
 * the same key wait for its record instead of building it again. A claim never makes
 * a build wrong: a reader that ignores one only builds the step itself.
 */
export interface StepClaim {
  v: number
  /** The step's cache key. */
  key: CID
  /** Peer id of the node that builds: where its record and layer will come from. */
  claimant: string
  /** The writer key that signed it, `NAME-N:BASE64`; null when the claimant's identity signed it. */
  writer: string | null
  /** The scope its record will be written in. */
  scope: string
  /** The trust epoch its signer was configured with. */
  epoch: number
  /** Random, chosen by the claimant: names this claim across renewals; among simultaneous claims the lowest wins. */
  id: Uint8Array
  /** How long after receiving this message a reader counts the claim live (on the reader's own clock). */
  leaseMs: number
  /** 0 for the first announcement, one more on each renewal: a reader ignores a message it has seen a newer one of. */
  seq: number
  /** True when the claimant is done (built or failed): the claim ends now. */
  release: boolean
}

/** Who signed a claim: its writer key's id, else its claimant's peer id. What trust policies name. */
export const claimSignerOf = (claim: Pick<StepClaim, 'claimant' | 'writer'>): string => claim.writer ?? claim.claimant

/** The exact bytes a claim's signature covers: utf8(CLAIM_DOMAIN) || body. */
export function claimSignedBytes (body: Uint8Array): Uint8Array {
  const prefix = Buffer.from(CLAIM_DOMAIN, 'utf8')
  const out = new Uint8Array(prefix.length + body.length)
  out.set(prefix)
  out.set(body, prefix.length)
  return out
}

/** A claim id as text (lower-case hex), for logs and the control API. */
export const claimIdHex = (id: Uint8Array): string => Buffer.from(id).toString('hex')

/** Orders claim ids bytewise: negative when `a` comes first. */
export function compareClaimIds (a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b)
}

function checkFields (claim: StepClaim): void {
  if (claim.v !== CLAIM_FORMAT) throw new TypeError(`claim.v must be ${CLAIM_FORMAT}`)
  if (CID.asCID(claim.key) === null) throw new TypeError('claim.key must be a CID')
  checkScope(claim.scope)
  checkEpoch(claim.epoch)
  if (!(claim.id instanceof Uint8Array) || claim.id.length !== CLAIM_ID_BYTES) throw new TypeError(`claim.id must be ${CLAIM_ID_BYTES} bytes`)
  if (!Number.isInteger(claim.leaseMs) || claim.leaseMs < 1 || claim.leaseMs > MAX_LEASE_MS) throw new TypeError(`claim.leaseMs must be a whole number from 1 to ${MAX_LEASE_MS}`)
  if (!Number.isInteger(claim.seq) || claim.seq < 0 || claim.seq > MAX_CLAIM_SEQ) throw new TypeError(`claim.seq must be a whole number from 0 to ${MAX_CLAIM_SEQ}`)
  if (typeof claim.release !== 'boolean') throw new TypeError('claim.release must be a boolean')
}

/**
 * Signed envelope, as a record's: dag-cbor `{ body, sig }`, `body` the canonical
 * dag-cbor of the StepClaim, `sig` the ed25519 signature over
 * utf8(CLAIM_DOMAIN) || body by the writer key the claim names, or by the claimant's
 * identity when it names none. Throws TypeError for a claim that breaks its format.
 */
export function signClaim (claim: StepClaim, signer: Identity | WriterKey): Uint8Array {
  if ('peerId' in signer) {
    if (claim.claimant !== signer.peerId) throw new TypeError('claim.claimant must be the signing identity')
    if (claim.writer !== null) throw new TypeError('a claim signed by the node identity names no writer key')
  } else if (claim.writer !== signer.id) {
    throw new TypeError('claim.writer must be the signing writer key')
  }
  checkFields(claim)
  const body = dagCbor.encode({ ...claim, id: new Uint8Array(claim.id) })
  const bytes = dagCbor.encode({ body, sig: signer.sign(claimSignedBytes(body)) })
  if (bytes.length > MAX_CLAIM_SIZE) throw new TypeError(`a claim of ${bytes.length} bytes is over ${MAX_CLAIM_SIZE}`)
  return bytes
}

/**
 * Decodes and verifies a claim envelope under `policy`, the order and reasons of
 * openRecord: over MAX_CLAIM_SIZE (`too-large`), does not decode (`malformed`),
 * no signature (`unsigned`), another format (`version`), the signature does not
 * verify for its signer (`bad-signature`), a field out of its range (`malformed`),
 * a signer the policy does not trust for its scope (`untrusted-signer`), about
 * another key than `key` when given (`wrong-key`), an epoch before the policy's
 * (`old-epoch`), a scope outside the policy's scopes (`wrong-scope`). Throws
 * ClaimInvalidError with that `reason`.
 */
export function openClaim (bytes: Uint8Array, policy: RecordPolicy, key?: CID): StepClaim {
  let k = key?.toString() ?? '?'
  const fail = (reason: RecordRejectReason, detail: string, cause?: unknown): ClaimInvalidError =>
    new ClaimInvalidError(k, reason, detail, cause !== undefined ? { cause } : undefined)
  if (bytes.length > MAX_CLAIM_SIZE) throw fail('too-large', `is ${bytes.length} bytes, over ${MAX_CLAIM_SIZE}`)
  const env = decodeSigned<StepClaim>(bytes, fail)
  const body = env.body
  const claim = env.value
  if (key === undefined) k = CID.asCID(claim.key)?.toString() ?? '?'
  if (claim.v !== CLAIM_FORMAT) throw fail('version', `has format ${String(claim.v)}, this reader reads format ${CLAIM_FORMAT}`)
  if (typeof claim.claimant !== 'string') throw fail('malformed', 'has no claimant')
  const { signer, pub } = signingKey(claim.writer, claim.claimant, 'claimant', fail)
  if (!verifySignature(pub, claimSignedBytes(body), env.sig)) throw fail('bad-signature', `signature does not verify for ${signer.slice(0, 200)}`)
  // The claimant is where a waiter expects the record from: it must be a peer id even when a writer key signed.
  if (claim.writer !== null && publicKeyFromPeerId(claim.claimant) === undefined) throw fail('malformed', `claimant ${claim.claimant.slice(0, 200)} is not an ed25519 peer id`)
  try {
    checkFields(claim)
  } catch (err) {
    throw fail('malformed', (err as Error).message, err)
  }
  if (!policy.trusts(signer, claim.scope)) throw fail('untrusted-signer', `signed by ${signer}, who is not trusted to write scope ${claim.scope}`)
  if (key !== undefined && !CID.asCID(claim.key)!.equals(key)) throw fail('wrong-key', 'is about another key')
  const epoch = policy.epoch ?? 0
  if (claim.epoch < epoch) throw fail('old-epoch', `was made in epoch ${claim.epoch}, before epoch ${epoch}`)
  if (policy.scopes !== undefined && !policy.scopes.includes(claim.scope)) throw fail('wrong-scope', `is in scope ${JSON.stringify(claim.scope)}, not in ${policy.scopes.join(', ')}`)
  return { v: claim.v, key: CID.asCID(claim.key)!, claimant: claim.claimant, writer: claim.writer, scope: claim.scope, epoch: claim.epoch, id: claim.id, leaseMs: claim.leaseMs, seq: claim.seq, release: claim.release }
}
