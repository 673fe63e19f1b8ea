import { CID } from 'multiformats/cid'
import { MAX_BLOCK_SIZE } from '@strata/chunker'
import { ProtocolViolationError } from './errors.ts'

/**
 * `/strata/blocks/1.0.0` messages. Each is one length-prefixed frame (unsigned
 * varint length, as @libp2p/utils' lpStream writes it) whose first byte is its type:
 *
 * - WANT      0x01, then (u8 cid length, cid bytes) repeated: the client's batch
 * - BLOCK     0x02, u8 cid length, cid bytes, block bytes
 * - DONT_HAVE 0x03, u8 cid length, cid bytes
 *
 * A stream carries WANTs from the client, as many as it likes (pipelined), and back
 * exactly one BLOCK or DONT_HAVE per wanted CID, in any order (the server answers
 * as its lookups finish; the client matches answers by CID). The client ends the stream
 * by closing its side.
 */
export const BLOCKS_PROTOCOL = '/strata/blocks/1.0.0'
/**
 * The same messages, with everything the server sends on a stream going through one
 * zstd stream (one context for the stream's life, flushed after each write, ended
 * before the server closes its side). WANTs travel as in 1.0.0. A client offers it
 * first and falls back to 1.0.0 with a peer that does not know it.
 */
export const BLOCKS_PROTOCOL_ZSTD = '/strata/blocks/1.1.0'
export const MSG_WANT = 0x01
export const MSG_BLOCK = 0x02
export const MSG_DONT_HAVE = 0x03
/** A strata CID (v1, sha2-256) is 36 bytes; anything much longer is not ours. */
export const MAX_CID_BYTES = 64
/** Largest frame body: one maximal block plus its type byte and CID. */
export const MAX_MESSAGE_SIZE = MAX_BLOCK_SIZE + 2 + MAX_CID_BYTES
/** CIDs in one WANT. */
export const MAX_WANTS_PER_MESSAGE = 256

export type Message =
  | { type: 'want', cids: CID[] }
  | { type: 'block', cid: CID, bytes: Uint8Array }
  | { type: 'dont-have', cid: CID }

/** The unsigned varint that prefixes a frame of `length` bytes (as lpStream reads it). */
export function encodeFrameLength (length: number): Uint8Array {
  if (!Number.isInteger(length) || length < 0 || length > MAX_MESSAGE_SIZE) throw new TypeError(`a frame is 0 to ${MAX_MESSAGE_SIZE} bytes, got ${length}`)
  const out: number[] = []
  let n = length
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80)
    n >>>= 7
  }
  out.push(n)
  return Uint8Array.from(out)
}

export function encodeWant (cids: readonly CID[]): Uint8Array {
  if (cids.length === 0 || cids.length > MAX_WANTS_PER_MESSAGE) throw new TypeError(`a want-list holds 1 to ${MAX_WANTS_PER_MESSAGE} CIDs`)
  let size = 1
  for (const c of cids) size += 1 + c.bytes.length
  const out = new Uint8Array(size)
  out[0] = MSG_WANT
  let at = 1
  for (const c of cids) {
    out[at++] = c.bytes.length
    out.set(c.bytes, at)
    at += c.bytes.length
  }
  return out
}

/** The header of a BLOCK message; send it followed by the block bytes, without copying them. */
export function encodeBlockHeader (cid: CID): Uint8Array {
  const out = new Uint8Array(2 + cid.bytes.length)
  out[0] = MSG_BLOCK
  out[1] = cid.bytes.length
  out.set(cid.bytes, 2)
  return out
}

export function encodeDontHave (cid: CID): Uint8Array {
  const out = new Uint8Array(2 + cid.bytes.length)
  out[0] = MSG_DONT_HAVE
  out[1] = cid.bytes.length
  out.set(cid.bytes, 2)
  return out
}

function readCid (buf: Uint8Array, at: number): { cid: CID, next: number } {
  const len = buf[at]
  if (len === undefined || len === 0 || len > MAX_CID_BYTES || at + 1 + len > buf.length) throw new ProtocolViolationError(`bad CID length at byte ${at}`)
  let cid: CID
  try {
    cid = CID.decode(buf.subarray(at + 1, at + 1 + len))
  } catch (err) {
    throw new ProtocolViolationError(`bad CID at byte ${at}`, { cause: err })
  }
  return { cid, next: at + 1 + len }
}

/** Decodes one frame body; throws ProtocolViolationError on anything malformed or over a limit. */
export function decodeMessage (buf: Uint8Array): Message {
  if (buf.length > MAX_MESSAGE_SIZE) throw new ProtocolViolationError(`message of ${buf.length} bytes is over the ${MAX_MESSAGE_SIZE} limit`)
  switch (buf[0]) {
    case MSG_WANT: {
      const cids: CID[] = []
      let at = 1
      while (at < buf.length) {
        if (cids.length === MAX_WANTS_PER_MESSAGE) throw new ProtocolViolationError(`want-list over ${MAX_WANTS_PER_MESSAGE} CIDs`)
        const r = readCid(buf, at)
        cids.push(r.cid)
        at = r.next
      }
      if (cids.length === 0) throw new ProtocolViolationError('empty want-list')
      return { type: 'want', cids }
    }
    case MSG_BLOCK: {
      const r = readCid(buf, 1)
      const bytes = buf.subarray(r.next)
      if (bytes.length > MAX_BLOCK_SIZE) throw new ProtocolViolationError(`block of ${bytes.length} bytes is over the ${MAX_BLOCK_SIZE} limit`)
      return { type: 'block', cid: r.cid, bytes }
    }
    case MSG_DONT_HAVE: {
      const r = readCid(buf, 1)
      if (r.next !== buf.length) throw new ProtocolViolationError('trailing bytes after a dont-have')
      return { type: 'dont-have', cid: r.cid }
    }
    default:
      throw new ProtocolViolationError(`unknown message type ${String(buf[0])}`)
  }
}
