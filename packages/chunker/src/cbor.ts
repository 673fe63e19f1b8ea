import { isUtf8 } from 'node:buffer'
import { equals } from 'multiformats/bytes'
import { CID } from 'multiformats/cid'
import type { Entry, EntryType } from './entry.ts'
import { InvalidManifestError } from './errors.ts'

/**
 * Writes entry-list blocks straight to dag-cbor bytes. @ipld/dag-cbor builds a
 * token per value and sorts every map's keys; for the one shape a writer emits
 * per entry that made most of a pack's time and garbage. The bytes are the
 * same as `dagCbor.encode({ entries })` of `encodeEntry` objects (test/cbor.test.ts
 * checks it over random entries); `readDagCbor` below reads them back.
 */

/** Entry types by their code in the `t` field. */
export const TYPE_CODES: readonly EntryType[] = ['file', 'dir', 'symlink', 'hardlink', 'whiteout', 'fifo', 'chardev', 'blockdev']
const TYPE_CODE = new Map<EntryType, number>(TYPE_CODES.map((t, i) => [t, i]))

const MAJOR_UINT = 0
const MAJOR_NEGINT = 1
const MAJOR_BYTES = 2
const MAJOR_TEXT = 3
const MAJOR_ARRAY = 4
const MAJOR_MAP = 5
const TRUE = 0xf5
// Tag 42, the CID tag of dag-cbor.
const CID_TAG = [0xd8, 0x2a]

// Map keys in dag-cbor order: shorter first, then by bytes.
const KEY = {
  c: 0x63, d: 0x64, g: 0x67, l: 0x6c, m: 0x6d, o: 0x6f, p: 0x70, r: 0x72, s: 0x73, t: 0x74, u: 0x75, x: 0x78
} as const
const KEY_MT = [0x62, 0x6d, 0x74]

const HEADER = Buffer.from([0xa1, 0x67, ...Buffer.from('entries')])

export class EntryListWriter {
  #buf = Buffer.allocUnsafe(256 * 1024)
  #pos = 0
  #count = 0
  readonly #mtime: boolean

  /** `mtime: false` leaves each entry's `mt` out (format 2, where times have blocks of their own). */
  constructor (opts: { mtime?: boolean } = {}) {
    this.#mtime = opts.mtime ?? true
  }

  get count (): number {
    return this.#count
  }

  /** Appends one entry; on an error the writer is left as it was. */
  add (e: Entry): void {
    const start = this.#pos
    try {
      this.#entry(e)
    } catch (err) {
      this.#pos = start
      throw err
    }
    this.#count++
  }

  /** The block's bytes: `{ entries: [...] }`. Resets the writer. */
  finish (): Uint8Array {
    const head = this.#headOf(MAJOR_ARRAY, this.#count)
    const out = new Uint8Array(HEADER.length + head.length + this.#pos)
    out.set(HEADER, 0)
    out.set(head, HEADER.length)
    out.set(this.#buf.subarray(0, this.#pos), HEADER.length + head.length)
    this.#pos = 0
    this.#count = 0
    return out
  }

  #entry (e: Entry): void {
    const xattrs = e.xattrs !== undefined && e.xattrs.length > 0 ? e.xattrs : undefined
    const chunks = e.chunks !== undefined && e.chunks.length > 0 ? e.chunks : undefined
    const keys = (this.#mtime ? 6 : 5) + (chunks !== undefined ? 1 : 0) + (e.data !== undefined ? 1 : 0) +
      (e.target !== undefined ? 1 : 0) + (e.opaque === true ? 1 : 0) + (e.rdev !== undefined ? 1 : 0) +
      (e.type === 'file' ? 1 : 0) + (xattrs !== undefined ? 1 : 0)
    this.#head(MAJOR_MAP, keys)
    if (chunks !== undefined) {
      this.#key(KEY.c)
      this.#head(MAJOR_ARRAY, chunks.length)
      for (const c of chunks) {
        this.#head(MAJOR_ARRAY, 2)
        const bytes = c.cid.bytes
        this.#ensure(2)
        this.#buf[this.#pos++] = CID_TAG[0]!
        this.#buf[this.#pos++] = CID_TAG[1]!
        this.#head(MAJOR_BYTES, bytes.length + 1)
        this.#ensure(bytes.length + 1)
        this.#buf[this.#pos++] = 0
        this.#buf.set(bytes, this.#pos)
        this.#pos += bytes.length
        this.#uint(c.length, e.path)
      }
    }
    if (e.data !== undefined) {
      this.#key(KEY.d)
      this.#bytes(e.data)
    }
    this.#key(KEY.g)
    this.#uint(e.gid, e.path)
    if (e.target !== undefined) {
      this.#key(KEY.l)
      this.#text(e.target, e.path)
    }
    this.#key(KEY.m)
    this.#uint(e.mode, e.path)
    if (e.opaque === true) {
      this.#key(KEY.o)
      this.#ensure(1)
      this.#buf[this.#pos++] = TRUE
    }
    this.#key(KEY.p)
    this.#text(e.path, e.path)
    if (e.rdev !== undefined) {
      this.#key(KEY.r)
      this.#head(MAJOR_ARRAY, 2)
      this.#uint(e.rdev[0], e.path)
      this.#uint(e.rdev[1], e.path)
    }
    if (e.type === 'file') {
      this.#key(KEY.s)
      this.#uint(e.size, e.path)
    }
    this.#key(KEY.t)
    const code = TYPE_CODE.get(e.type)
    if (code === undefined) throw new InvalidManifestError(`unknown entry type ${String(e.type)}`, { path: e.path })
    this.#uint(code, e.path)
    this.#key(KEY.u)
    this.#uint(e.uid, e.path)
    if (xattrs !== undefined) {
      this.#key(KEY.x)
      this.#head(MAJOR_ARRAY, xattrs.length)
      for (const [name, value] of xattrs) {
        this.#head(MAJOR_ARRAY, 2)
        this.#text(name, e.path)
        this.#bytes(value)
      }
    }
    if (!this.#mtime) return
    this.#ensure(3)
    this.#buf[this.#pos++] = KEY_MT[0]!
    this.#buf[this.#pos++] = KEY_MT[1]!
    this.#buf[this.#pos++] = KEY_MT[2]!
    this.#head(MAJOR_ARRAY, 2)
    this.#int(e.mtime[0], e.path)
    this.#uint(e.mtime[1], e.path)
  }

  #ensure (n: number): void {
    if (this.#pos + n <= this.#buf.length) return
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + n))
    this.#buf.copy(next, 0, 0, this.#pos)
    this.#buf = next
  }

  #key (k: number): void {
    this.#ensure(2)
    this.#buf[this.#pos++] = 0x61 // text of one byte
    this.#buf[this.#pos++] = k
  }

  #head (major: number, n: number): void {
    this.#ensure(9)
    const b = this.#buf
    const m = major << 5
    if (n < 24) {
      b[this.#pos++] = m | n
    } else if (n < 0x100) {
      b[this.#pos++] = m | 24
      b[this.#pos++] = n
    } else if (n < 0x10000) {
      b[this.#pos++] = m | 25
      b.writeUInt16BE(n, this.#pos)
      this.#pos += 2
    } else if (n < 0x100000000) {
      b[this.#pos++] = m | 26
      b.writeUInt32BE(n, this.#pos)
      this.#pos += 4
    } else {
      b[this.#pos++] = m | 27
      b.writeUInt32BE(Math.floor(n / 0x100000000), this.#pos)
      b.writeUInt32BE(n >>> 0, this.#pos + 4)
      this.#pos += 8
    }
  }

  #headOf (major: number, n: number): Uint8Array {
    const pos = this.#pos
    this.#head(major, n)
    const out = Uint8Array.prototype.slice.call(this.#buf, pos, this.#pos)
    this.#pos = pos
    return out
  }

  #uint (n: number, path: string): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidManifestError(`not an unsigned integer: ${n}`, { path })
    this.#head(MAJOR_UINT, n)
  }

  #int (n: number, path: string): void {
    if (!Number.isSafeInteger(n)) throw new InvalidManifestError(`not an integer: ${n}`, { path })
    if (n >= 0) this.#head(MAJOR_UINT, n)
    else this.#head(MAJOR_NEGINT, -1 - n)
  }

  #text (s: string, path: string): void {
    // A lone surrogate has no UTF-8 form; the generic encoder would substitute it.
    if (!s.isWellFormed()) throw new InvalidManifestError('a string is not valid Unicode', { path })
    const n = Buffer.byteLength(s, 'utf8')
    this.#head(MAJOR_TEXT, n)
    this.#ensure(n)
    this.#pos += this.#buf.write(s, this.#pos, n, 'utf8')
  }

  #bytes (v: Uint8Array): void {
    this.#head(MAJOR_BYTES, v.length)
    this.#ensure(v.length)
    this.#buf.set(v, this.#pos)
    this.#pos += v.length
  }
}

/**
 * Reads a block in the one encoding dag-cbor allows for a value: shortest heads,
 * map keys in dag-cbor order and never twice, definite lengths, valid UTF-8, tag
 * 42 only (a CID in its own bytes), 64-bit floats only and never for an integer,
 * no undefined. Anything else is an InvalidManifestError, so that a layer's
 * manifest has one encoding and one CID. Values come out as @ipld/dag-cbor's
 * decoder gives them (maps as plain objects, CIDs as CID, bytes as views of
 * `bytes`), without its token per value, which dominates decoding a large layer's
 * entry lists.
 */
export function readDagCbor (bytes: Uint8Array): unknown {
  const r = new Reader(bytes)
  const v = r.value(0)
  if (r.pos !== bytes.length) throw new InvalidManifestError(`${bytes.length - r.pos} bytes after the value`)
  return v
}

// Nesting a manifest needs is 5 (block, list, entry, chunks, chunk); this leaves room
// for the generic decoder's users while keeping a hostile block off the stack.
const MAX_DEPTH = 64
const ASCII = Array.from({ length: 0x80 }, (_, c) => String.fromCharCode(c))
const ASCII_PAIRS: Array<string | undefined> = new Array(0x80 * 0x80)
const CID_PREFIX = 0x00

class Reader {
  readonly #b: Uint8Array
  pos = 0

  constructor (b: Uint8Array) {
    // Views of a Buffer are Buffers; the values come out as plain Uint8Arrays, as @ipld/dag-cbor's do.
    this.#b = Buffer.isBuffer(b) ? new Uint8Array(b.buffer, b.byteOffset, b.length) : b
  }

  value (depth: number): unknown {
    if (depth > MAX_DEPTH) throw new InvalidManifestError(`nested deeper than ${MAX_DEPTH}`)
    const b = this.#b
    if (this.pos >= b.length) throw new InvalidManifestError('the block ends inside a value')
    const first = b[this.pos]!
    const major = first >> 5
    switch (major) {
      case MAJOR_UINT:
        return this.#arg(first)
      case MAJOR_NEGINT: {
        const n = -1 - this.#arg(first)
        if (n < Number.MIN_SAFE_INTEGER) throw new InvalidManifestError('an integer past -2^53')
        return n
      }
      case MAJOR_BYTES: {
        const n = this.#length(first)
        const out = b.subarray(this.pos, this.pos + n)
        this.pos += n
        return out
      }
      case MAJOR_TEXT:
        return this.#text(this.#length(first))
      case MAJOR_ARRAY: {
        const n = this.#length(first)
        const out = new Array<unknown>(n)
        for (let i = 0; i < n; i++) out[i] = this.value(depth + 1)
        return out
      }
      case MAJOR_MAP:
        return this.#map(this.#length(first), depth)
      case 6: {
        if (this.#arg(first) !== 42) throw new InvalidManifestError('a tag other than 42 (CID)')
        if (this.pos >= b.length || b[this.pos]! >> 5 !== MAJOR_BYTES) throw new InvalidManifestError('tag 42 must hold bytes')
        const n = this.#length(b[this.pos]!)
        if (n < 2 || b[this.pos] !== CID_PREFIX) throw new InvalidManifestError('a CID must be the bytes 0x00 then the CID')
        const start = this.pos + 1
        this.pos += n
        const raw = b.subarray(start, this.pos)
        let cid: CID
        try {
          cid = CID.decode(raw)
        } catch (err) {
          throw new InvalidManifestError('a malformed CID', { cause: err })
        }
        // The decoder takes some other spellings of a CID (a version-0 prefix, for one)
        // and gives back a CID whose bytes differ: only the CID's own bytes are its encoding.
        if (!equals(cid.bytes, raw)) throw new InvalidManifestError('a CID not in its own encoding')
        return cid
      }
      default:
        this.pos++
        if (first === TRUE) return true
        if (first === 0xf4) return false
        if (first === 0xf6) return null
        if (first === 0xfb) return this.#float()
        throw new InvalidManifestError(`a simple value or float (0x${first.toString(16)}) that dag-cbor does not allow`)
    }
  }

  /** A 64-bit float (the only width dag-cbor allows), never one that equals an integer: that is encoded as one. */
  #float (): number {
    const b = this.#b
    if (this.pos + 8 > b.length) throw new InvalidManifestError('the block ends inside a float')
    const v = new DataView(b.buffer, b.byteOffset + this.pos, 8).getFloat64(0)
    this.pos += 8
    if (!Number.isFinite(v)) throw new InvalidManifestError('NaN or an infinity')
    if (Number.isSafeInteger(v)) throw new InvalidManifestError('an integer encoded as a float')
    return v
  }

  /** A head's argument, which must be in its shortest form and a safe integer. */
  #arg (first: number): number {
    const b = this.#b
    const info = first & 0x1f
    const at = this.pos + 1
    let n: number
    let size: number
    if (info < 24) {
      n = info
      size = 0
    } else if (info === 24) {
      size = 1
      n = b[at]!
    } else if (info === 25) {
      size = 2
      n = (b[at]! << 8) | b[at + 1]!
    } else if (info === 26) {
      size = 4
      n = ((b[at]! << 24) >>> 0) + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!)
    } else if (info === 27) {
      size = 8
      const hi = ((b[at]! << 24) >>> 0) + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!)
      const lo = ((b[at + 4]! << 24) >>> 0) + ((b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!)
      // Past 2^53 a number is not exact, and dag-cbor's JavaScript encoder writes such
      // a number as a float: refusing it keeps one encoding per value.
      if (hi > 0x1fffff) throw new InvalidManifestError('an integer past 2^53')
      n = hi * 0x100000000 + lo
    } else {
      throw new InvalidManifestError(info === 31 ? 'an indefinite length' : `a reserved head (0x${first.toString(16)})`)
    }
    if (at + size > b.length) throw new InvalidManifestError('the block ends inside a head')
    if (size > 0 && n < (size === 1 ? 24 : size === 2 ? 0x100 : size === 4 ? 0x10000 : 0x100000000)) throw new InvalidManifestError('an integer or length not in its shortest form')
    this.pos = at + size
    return n
  }

  /** A length: no more than the bytes left, so that a hostile count allocates nothing. */
  #length (first: number): number {
    const n = this.#arg(first)
    if (n > this.#b.length - this.pos) throw new InvalidManifestError('a length past the end of the block')
    return n
  }

  #text (n: number): string {
    const b = this.#b
    const start = this.pos
    const end = start + n
    this.pos = end
    // Map keys, one or two ASCII characters, are made once: the same string each
    // time is a property name the engine has already looked up.
    if (n === 1 && b[start]! < 0x80) return ASCII[b[start]!]!
    if (n === 2 && (b[start]! | b[start + 1]!) < 0x80) {
      const k = (b[start]! << 7) | b[start + 1]!
      return (ASCII_PAIRS[k] ??= String.fromCharCode(b[start]!, b[start + 1]!))
    }
    const sub = b.subarray(start, end)
    const s = Buffer.from(sub.buffer, sub.byteOffset, n).toString('utf8')
    // Malformed UTF-8 decodes to U+FFFD; only then is the check worth its cost.
    if (s.includes('\ufffd') && !isUtf8(sub)) throw new InvalidManifestError('a string is not valid UTF-8')
    return s
  }

  #map (n: number, depth: number): Record<string, unknown> {
    const b = this.#b
    const out: Record<string, unknown> = {}
    let prevStart = -1
    let prevLen = 0
    for (let i = 0; i < n; i++) {
      if (this.pos >= b.length || b[this.pos]! >> 5 !== MAJOR_TEXT) throw new InvalidManifestError('a map key that is not a string')
      const len = this.#length(b[this.pos]!)
      const start = this.pos
      // dag-cbor's order: shorter keys first, then bytewise; equal is a duplicate.
      if (prevStart >= 0 && (len < prevLen || (len === prevLen && compareBytes(b, prevStart, start, len) >= 0))) {
        throw new InvalidManifestError('map keys out of order or repeated')
      }
      const key = this.#text(len)
      prevStart = start
      prevLen = len
      if (key === '__proto__') throw new InvalidManifestError('a map key named __proto__')
      out[key] = this.value(depth + 1)
    }
    return out
  }
}

function compareBytes (b: Uint8Array, x: number, y: number, n: number): number {
  for (let i = 0; i < n; i++) {
    const d = b[x + i]! - b[y + i]!
    if (d !== 0) return d
  }
  return 0
}
