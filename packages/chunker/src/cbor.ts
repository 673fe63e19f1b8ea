import type { Entry, EntryType } from './entry.ts'
import { InvalidManifestError } from './errors.ts'

/**
 * Writes entry-list blocks straight to dag-cbor bytes. @ipld/dag-cbor builds a
 * token per value and sorts every map's keys; for the one shape a writer emits
 * per entry that cost ~10 µs and most of a pack's garbage. The bytes are the
 * same as `dagCbor.encode({ entries })` of `encodeEntry` objects (test/cbor.test.ts
 * checks it over random entries); readers still decode with @ipld/dag-cbor.
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
    const keys = 6 + (chunks !== undefined ? 1 : 0) + (e.data !== undefined ? 1 : 0) +
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
