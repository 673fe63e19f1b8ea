import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { base58btc } from 'multiformats/bases/base58'
import * as Digest from 'multiformats/hashes/digest'
import { identity as identityHash } from 'multiformats/hashes/identity'
import { IdentityError } from './errors.ts'

/** The node's ed25519 signing identity. */
export interface Identity {
  /** libp2p peer id of the public key (identity multihash of its protobuf form, base58btc): "12D3KooW...". */
  readonly peerId: string
  /** Raw 32-byte public key. */
  readonly publicKey: Uint8Array
  sign (data: Uint8Array): Uint8Array
  /** The 32-byte ed25519 seed, for a library that builds its own key from it (the daemon's libp2p key). */
  seed (): Uint8Array
}

// libp2p's PublicKey protobuf for ed25519: field 1 (Type) = 1 (Ed25519), field 2 (Data) = 32 bytes.
const PB_PREFIX = Uint8Array.of(0x08, 0x01, 0x12, 0x20)
// DER SubjectPublicKeyInfo prefix for a raw ed25519 key.
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

/** The identity key's file name in a data dir. */
export const IDENTITY_FILE = 'identity.key'

/**
 * Loads `<dataDir>/identity.key` (PKCS#8 PEM, mode 0600), creating it on first use.
 * Two processes racing to create it end up with the same key (create-by-link).
 * Throws IdentityError when the file cannot be read or created or is not ed25519.
 */
export async function loadIdentity (dataDir: string, opts: { signal?: AbortSignal } = {}): Promise<Identity> {
  const path = `${dataDir}/${IDENTITY_FILE}`
  let pem: string | undefined
  try {
    pem = await readFile(path, { encoding: 'utf8', signal: opts.signal })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new IdentityError(path, { cause: err })
  }
  if (pem === undefined) {
    await mkdir(dataDir, { recursive: true })
    const { privateKey } = generateKeyPairSync('ed25519')
    const fresh = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
    const tmp = `${path}.${process.pid}.${Date.now()}.tmp`
    await writeFile(tmp, fresh, { mode: 0o600 })
    try {
      await link(tmp, path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new IdentityError(path, { cause: err })
    } finally {
      await rm(tmp, { force: true })
    }
    pem = await readFile(path, 'utf8')
  }
  let key: KeyObject
  let seed: Uint8Array
  try {
    key = createPrivateKey(pem)
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${String(key.asymmetricKeyType)} key, not ed25519`)
    const d = key.export({ format: 'jwk' }).d
    if (typeof d !== 'string') throw new Error('the key has no private part')
    seed = Buffer.from(d, 'base64url')
  } catch (err) {
    throw new IdentityError(path, { cause: err })
  }
  const der = createPublicKey(key).export({ type: 'spki', format: 'der' })
  const publicKey = new Uint8Array(der.subarray(der.length - 32))
  return {
    peerId: peerIdFromPublicKey(publicKey),
    publicKey,
    sign: (data) => new Uint8Array(sign(null, data, key)),
    seed: () => new Uint8Array(seed)
  }
}

/** The libp2p peer id of a raw 32-byte ed25519 public key. */
export function peerIdFromPublicKey (publicKey: Uint8Array): string {
  const pb = new Uint8Array(PB_PREFIX.length + publicKey.length)
  pb.set(PB_PREFIX)
  pb.set(publicKey, PB_PREFIX.length)
  return base58btc.encode(identityHash.digest(pb).bytes).slice(1) // peer ids carry no multibase prefix
}

/** The ed25519 public key inside an ed25519 peer id, or undefined for any other kind of id. */
export function publicKeyFromPeerId (peerId: string): Uint8Array | undefined {
  try {
    const mh = Digest.decode(base58btc.decode(`z${peerId}`))
    if (mh.code !== identityHash.code) return undefined
    const pb = mh.digest
    if (pb.length !== PB_PREFIX.length + 32 || !PB_PREFIX.every((b, i) => pb[i] === b)) return undefined
    return pb.subarray(PB_PREFIX.length)
  } catch {
    return undefined
  }
}

/** Whether `signature` is the ed25519 signature of `data` under the raw `publicKey`; false for a malformed key. */
export function verifySignature (publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' })
    return verify(null, data, key, signature)
  } catch {
    return false
  }
}
