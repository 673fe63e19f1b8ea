import { hash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import * as dagCbor from '@ipld/dag-cbor'
import { BlockMismatchError } from './errors.ts'

export const RAW = 0x55
export const DAG_CBOR = dagCbor.code
export const SHA2_256 = 0x12
/** No block, content or manifest, may be larger: a peer's message is bounded by it. */
export const MAX_BLOCK_SIZE = 1024 * 1024

/** One call, no Hash object: cheaper than createHash() per block. */
export function sha256 (bytes: Uint8Array): Uint8Array {
  return hash('sha256', bytes, 'buffer')
}

const BASE32 = Buffer.from('abcdefghijklmnopqrstuvwxyz234567', 'latin1')

/**
 * `cid.toString()` for a CIDv1 (multibase base32, 'b' prefix), built as one flat
 * string: multiformats appends a character at a time, and each of those strings
 * stays a rope of many pieces, far larger than the string, for as long as it is kept.
 */
export function cidString (cid: CID): string {
  if (cid.version !== 1) return cid.toString()
  const bytes = cid.bytes
  const out = Buffer.allocUnsafe(1 + Math.ceil(bytes.length * 8 / 5))
  out[0] = 0x62 // 'b'
  let n = 1
  let bits = 0
  let value = 0
  for (let i = 0; i < bytes.length; i++) {
    value = ((value << 8) | bytes[i]!) & 0xfff
    bits += 8
    while (bits >= 5) {
      bits -= 5
      out[n++] = BASE32[(value >>> bits) & 31]!
    }
  }
  if (bits > 0) out[n++] = BASE32[(value << (5 - bits)) & 31]!
  return out.toString('latin1', 0, n)
}

export function cidOf (codec: number, bytes: Uint8Array): CID {
  return CID.createV1(codec, Digest.create(SHA2_256, sha256(bytes)))
}

/** Only CIDv1 with sha2-256 and the raw or dag-cbor codec names a strata block. */
export function isStrataCid (cid: CID): boolean {
  return cid.version === 1 && cid.multihash.code === SHA2_256 && cid.multihash.size === 32 &&
    (cid.code === RAW || cid.code === DAG_CBOR)
}

/** Throws BlockMismatchError unless `bytes` is exactly the block `cid` names. */
export function verifyBlock (cid: CID, bytes: Uint8Array): void {
  if (!isStrataCid(cid)) throw new BlockMismatchError(`unsupported CID ${cid.toString()} (only CIDv1 sha2-256 raw/dag-cbor)`)
  if (bytes.length > MAX_BLOCK_SIZE) throw new BlockMismatchError(`block ${cid.toString()} is ${bytes.length} bytes, over the ${MAX_BLOCK_SIZE} limit`)
  const digest = sha256(bytes)
  const want = cid.multihash.digest
  if (Buffer.compare(digest, want) !== 0) throw new BlockMismatchError(`block bytes do not hash to ${cid.toString()}`)
}
