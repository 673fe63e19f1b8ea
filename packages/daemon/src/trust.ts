import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import { parseWriter, parseWriterId, peerIdFromPublicKey } from '@strata/records'
import { DaemonConfigError } from './errors.ts'

/** The header of a libp2p private network key file (the go-ipfs / js-libp2p `swarm.key` format, v1). */
const PSK_HEADER = '/key/swarm/psk/1.0.0/'
const PSK_CODEC = '/base16/'
/** A key file is three short lines; anything much longer is not one. */
const MAX_PSK_FILE = 1024
/** An allow-list file is peer ids, one a line; bound what a typo'd path can make us read. */
const MAX_PEER_FILE = 4 * 1024 * 1024

/** A fresh pre-shared key in swarm.key format: header, codec, 64 hex digits. */
export function generatePsk (): string {
  return `${PSK_HEADER}\n${PSK_CODEC}\n${randomBytes(32).toString('hex')}\n`
}

/**
 * Checks a swarm.key file's text and returns it as the bytes libp2p's
 * `preSharedKey` takes. Throws DaemonConfigError naming `path` and the problem.
 */
export function parsePsk (text: string, path: string): Uint8Array {
  const lines = text.split(/\r?\n/)
  while (lines.length > 3 && lines[lines.length - 1] === '') lines.pop()
  const bad = (what: string): DaemonConfigError => new DaemonConfigError(`${path}: not a pre-shared key file: ${what} (create one with strata keygen-psk)`)
  if (lines[0] !== PSK_HEADER) throw bad(`line 1 must be ${PSK_HEADER}`)
  if (lines[1] !== PSK_CODEC) throw bad(`line 2 must be ${PSK_CODEC} (the only encoding supported)`)
  const hex = lines[2] ?? ''
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw bad(`line 3 must be 64 hex digits (a 32-byte key), got ${hex.length} characters`)
  if (lines.length > 3) throw bad('more than three lines')
  return Buffer.from(`${PSK_HEADER}\n${PSK_CODEC}\n${hex.toLowerCase()}`, 'utf8')
}

/** Reads and checks a swarm.key file. */
export async function readPsk (path: string): Promise<Uint8Array> {
  let buf: Buffer
  try {
    buf = await readFile(path)
  } catch (err) {
    throw new DaemonConfigError(`cannot read the pre-shared key file ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (buf.length > MAX_PSK_FILE) throw new DaemonConfigError(`${path}: not a pre-shared key file: ${buf.length} bytes, a key file is about 100`)
  return parsePsk(buf.toString('utf8'), path)
}

/**
 * Writes a new key to `path` with mode 0600; never overwrites (the file is
 * created exclusively). Throws DaemonConfigError when the file exists.
 */
export async function writePsk (path: string): Promise<void> {
  try {
    await writeFile(path, generatePsk(), { mode: 0o600, flag: 'wx' })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new DaemonConfigError(code === 'EEXIST' ? `${path} exists: not overwriting a key (remove it first to replace it)` : `cannot write ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * A peer id as libp2p prints it, from a peer id or a raw ed25519 public key in hex
 * (64 digits). Throws Error for anything else.
 */
export function peerIdOf (s: string): string {
  if (/^[0-9a-fA-F]{64}$/.test(s)) return peerIdFromPublicKey(Buffer.from(s, 'hex'))
  return peerIdFromString(s).toString()
}

/**
 * A trusted-writer entry with its signer normalized: `ID` or `ID@GLOB`, where ID is
 * a writer key's public part (`NAME-N:BASE64`, as `strata keygen-writer` prints it),
 * a peer id or an ed25519 public key in hex, and GLOB limits it to matching scopes.
 */
export function writerOf (entry: string): string {
  const w = parseWriter(entry)
  const peer = parseWriterId(w.peer) !== undefined ? w.peer : peerIdOf(w.peer)
  return w.scopes === null ? peer : `${peer}@${w.scopes}`
}

/** Peer ids (or ed25519 public keys in hex), one a line; `#` starts a comment; blank lines are skipped. A bad line is named as path:line. */
export function parsePeerList (text: string, path: string, normalize: (line: string) => string = peerIdOf): string[] {
  const what = normalize === writerOf ? 'a trusted writer (NAME-N:BASE64 or a peer id, optionally @SCOPES)' : 'a peer id'
  const out: string[] = []
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.replace(/#.*$/, '').trim()
    if (line === '') continue
    try {
      out.push(normalize(line))
    } catch (err) {
      throw new DaemonConfigError(`${path}:${i + 1}: ${JSON.stringify(line.slice(0, 80))} is not ${what}`, { cause: err })
    }
  }
  return out
}

export async function readPeerList (path: string, normalize: (line: string) => string = peerIdOf): Promise<string[]> {
  let buf: Buffer
  try {
    buf = await readFile(path)
  } catch (err) {
    throw new DaemonConfigError(`cannot read the peer list ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (buf.length > MAX_PEER_FILE) throw new DaemonConfigError(`${path}: ${buf.length} bytes, over the ${MAX_PEER_FILE} a peer list may have`)
  return parsePeerList(buf.toString('utf8'), path, normalize)
}
