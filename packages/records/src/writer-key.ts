import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { WriterKeyError } from './errors.ts'

/**
 * A named ed25519 signing key for records, after Nix's signing keys: the name ends
 * in `-N`, the key's generation (`ci-main-1`, then `ci-main-2` after a rotation).
 * A CI job that may write a scope gets it from its secret store; readers trust its
 * public part, `NAME-N:BASE64`, whatever VM the job ran on.
 */
export interface WriterKey {
  /** `NAME-N`. */
  readonly name: string
  /** Raw 32-byte public key. */
  readonly publicKey: Uint8Array
  /** `NAME-N:BASE64(public key)`: what records carry as their signer and readers list as trusted. */
  readonly id: string
  sign (data: Uint8Array): Uint8Array
}

/** `NAME-N`: a base name of letters, digits and `._+-`, then `-` and the generation. */
const KEY_NAME = /^[A-Za-z0-9._+-]{1,64}-[1-9][0-9]{0,8}$/
const BASE_NAME = /^[A-Za-z0-9._+-]{1,64}$/
const PUBLIC_ID = /^([A-Za-z0-9._+-]{1,64}-[1-9][0-9]{0,8}):([A-Za-z0-9+/]{43}=)$/
/** A secret key file is one short line; anything much longer is not one. */
const MAX_KEY_FILE = 1024
// DER PKCS#8 header of an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')

/** Whether `s` is a full key name, `NAME-N`. */
export function isWriterKeyName (s: string): boolean {
  return KEY_NAME.test(s)
}

/** Whether `s` can be the base of a key name (`ci-main` in `ci-main-1`). */
export function isWriterBaseName (s: string): boolean {
  return BASE_NAME.test(s)
}

/** `NAME-N` split into its base and generation. Throws TypeError for anything else. */
export function splitWriterKeyName (name: string): { base: string, generation: number } {
  if (!KEY_NAME.test(name)) throw new TypeError(`writer key name ${JSON.stringify(name)} must be NAME-N: letters, digits, "._+-", then "-" and a number from 1`)
  const dash = name.lastIndexOf('-')
  return { base: name.slice(0, dash), generation: Number(name.slice(dash + 1)) }
}

/** The public part of a writer key, `NAME-N:BASE64` (32 bytes), parsed; undefined for anything else. */
export function parseWriterId (id: string): { name: string, publicKey: Uint8Array } | undefined {
  const m = PUBLIC_ID.exec(id)
  if (m === null) return undefined
  const publicKey = new Uint8Array(Buffer.from(m[2]!, 'base64'))
  if (publicKey.length !== 32 || Buffer.from(publicKey).toString('base64') !== m[2]) return undefined
  return { name: m[1]!, publicKey }
}

function fromSeed (name: string, seed: Uint8Array): WriterKey {
  const key: KeyObject = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' })
  const der = createPublicKey(key).export({ type: 'spki', format: 'der' })
  const publicKey = new Uint8Array(der.subarray(der.length - 32))
  return { name, publicKey, id: `${name}:${Buffer.from(publicKey).toString('base64')}`, sign: (data) => new Uint8Array(sign(null, data, key)) }
}

/**
 * A fresh writer key named `name` (`NAME-N`), and its secret file text: Nix's
 * format, `NAME-N:BASE64(seed || public key)` on one line.
 */
export function generateWriterKey (name: string): { key: WriterKey, secret: string } {
  splitWriterKeyName(name)
  const { privateKey } = generateKeyPairSync('ed25519')
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d!, 'base64url')
  const key = fromSeed(name, seed)
  return { key, secret: `${name}:${Buffer.concat([seed, key.publicKey]).toString('base64')}\n` }
}

/** Reads a writer key's secret text (see generateWriterKey). Throws WriterKeyError naming `path`. */
export function parseWriterKey (text: string, path: string): WriterKey {
  const line = text.trim()
  const colon = line.indexOf(':')
  const name = line.slice(0, colon)
  if (colon < 0 || !KEY_NAME.test(name)) throw new WriterKeyError(path, 'not a writer key: it must be one line NAME-N:BASE64 (create one with strata keygen-writer)')
  const raw = Buffer.from(line.slice(colon + 1), 'base64')
  if (raw.length !== 64 || raw.toString('base64') !== line.slice(colon + 1)) throw new WriterKeyError(path, `not a writer key: the part after "${name}:" must be 64 bytes in base64`)
  const key = fromSeed(name, raw.subarray(0, 32))
  if (!Buffer.from(key.publicKey).equals(raw.subarray(32))) throw new WriterKeyError(path, 'not a writer key: its public half does not match its seed')
  return key
}

/** Reads and checks a writer key file. Throws WriterKeyError naming the file. */
export async function loadWriterKey (path: string, opts: { signal?: AbortSignal } = {}): Promise<WriterKey> {
  let buf: Buffer
  try {
    buf = await readFile(path, { signal: opts.signal })
  } catch (err) {
    throw new WriterKeyError(path, `cannot read it: ${(err as Error).message}`, { cause: err })
  }
  if (buf.length > MAX_KEY_FILE) throw new WriterKeyError(path, `not a writer key: ${buf.length} bytes, a key file is about 100`)
  return parseWriterKey(buf.toString('utf8'), path)
}
