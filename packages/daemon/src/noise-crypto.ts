import { createCipheriv, createDecipheriv, createHash, createSecretKey } from 'node:crypto'
import type { KeyObject } from 'node:crypto'
import { pureJsCrypto } from '@chainsafe/libp2p-noise'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { Uint8ArrayList } from 'uint8arraylist'

const TAG = 16

// The library types its lists with its own copy of uint8arraylist; the two copies
// recognise each other at run time (Symbol.for), not in the type system.
type Sealed = ReturnType<ICryptoInterface['chaCha20Poly1305Encrypt']>
const asSealed = (v: Uint8Array | Uint8ArrayList): Sealed => v as unknown as Sealed

/**
 * Noise's ChaCha20-Poly1305 through node:crypto (OpenSSL), with the session key
 * turned into a KeyObject once instead of once per 64 KiB message, and no copy to
 * join ciphertext and tag. The handshake (X25519, HKDF) stays the library's. Same
 * cipher, same bytes on the wire: it talks to any Noise peer.
 */
const keys = new WeakMap<Uint8Array, KeyObject>()

function keyOf (k: Uint8Array): KeyObject {
  let key = keys.get(k)
  if (key === undefined) {
    key = createSecretKey(k)
    keys.set(k, key)
  }
  return key
}

export const noiseCrypto: ICryptoInterface = {
  ...pureJsCrypto,
  hashSHA256 (data) {
    const hash = createHash('sha256')
    if (data instanceof Uint8Array) return hash.update(data).digest()
    for (const buf of data) hash.update(buf)
    return hash.digest()
  },
  chaCha20Poly1305Encrypt (plaintext, nonce, ad, k) {
    const cipher = createCipheriv('chacha20-poly1305', keyOf(k), nonce, { authTagLength: TAG })
    cipher.setAAD(ad, { plaintextLength: plaintext.byteLength })
    const out = new Uint8ArrayList()
    if (plaintext instanceof Uint8Array) out.append(cipher.update(plaintext))
    else for (const buf of plaintext) out.append(cipher.update(buf))
    const final = cipher.final()
    if (final.byteLength > 0) out.append(final)
    out.append(cipher.getAuthTag())
    return asSealed(out)
  },
  chaCha20Poly1305Decrypt (ciphertext, nonce, ad, k) {
    if (ciphertext.byteLength < TAG) throw new Error('Invalid chacha20poly1305 ciphertext')
    const end = ciphertext.byteLength - TAG
    const decipher = createDecipheriv('chacha20-poly1305', keyOf(k), nonce, { authTagLength: TAG })
    decipher.setAAD(ad, { plaintextLength: end })
    decipher.setAuthTag(ciphertext.subarray(end))
    if (ciphertext instanceof Uint8Array) {
      const text = decipher.update(ciphertext.subarray(0, end))
      const final = decipher.final()
      return final.byteLength > 0 ? Buffer.concat([text, final]) : text
    }
    const out = new Uint8ArrayList()
    for (const buf of ciphertext.sublist(0, end)) out.append(decipher.update(buf))
    const final = decipher.final()
    if (final.byteLength > 0) out.append(final)
    return asSealed(out)
  }
}
