import * as dagCbor from '@ipld/dag-cbor'
import type { RecordRejectReason } from './errors.ts'
import { publicKeyFromPeerId } from './identity.ts'
import { parseWriterId } from './writer-key.ts'

/** Builds the error of one refusal: records and claims each throw their own kind. */
export type Refuse = (reason: RecordRejectReason, detail: string, cause?: unknown) => Error

/**
 * A signed envelope `{ body, sig }` decoded, its body decoded to a map: what records
 * and claims both start from. Nothing is verified yet.
 */
export function decodeSigned<T> (bytes: Uint8Array, fail: Refuse): { body: Uint8Array, sig: Uint8Array, value: T } {
  let env: { body?: unknown, sig?: unknown }
  try {
    env = dagCbor.decode<{ body?: unknown, sig?: unknown }>(bytes)
  } catch (err) {
    throw fail('malformed', 'does not decode', err)
  }
  if (typeof env !== 'object' || env === null || !(env.body instanceof Uint8Array)) throw fail('malformed', 'is not a signed envelope')
  if (!(env.sig instanceof Uint8Array) || env.sig.length === 0) throw fail('unsigned', 'carries no signature')
  let value: T
  try {
    value = dagCbor.decode<T>(env.body)
  } catch (err) {
    throw fail('malformed', 'body does not decode', err)
  }
  if (typeof value !== 'object' || value === null) throw fail('malformed', 'body is not a map')
  return { body: env.body, sig: env.sig, value }
}

/**
 * Who signed an envelope and their public key: the writer key when `writer` is set,
 * else the peer `peer` (named `role` in the refusal, e.g. producer, claimant).
 */
export function signingKey (writer: unknown, peer: string, role: string, fail: Refuse): { signer: string, pub: Uint8Array } {
  if (writer !== null && typeof writer !== 'string') throw fail('malformed', 'has a writer that is not a string')
  const pub = writer !== null ? parseWriterId(writer)?.publicKey : publicKeyFromPeerId(peer)
  if (pub === undefined) throw fail('malformed', writer !== null ? `writer ${writer.slice(0, 200)} is not NAME-N:BASE64` : `${role} ${peer.slice(0, 200)} is not an ed25519 peer id`)
  return { signer: writer ?? peer, pub }
}
