import { closeSync, openSync, readSync, writeSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import type { ManifestBlock } from './plan.ts'
import { CommitError } from './errors.ts'

/** A manifest block is at most this big (the format's block limit), its CID far smaller. */
const MAX_BLOCK = 2 * 1024 * 1024
const MAX_CID = 256

/**
 * A commit's entry-list blocks kept in a file while its walk runs outside the
 * store's turn, then read back in order: `<cid length><bytes length><cid><bytes>`
 * records, lengths as 32-bit big-endian.
 */
export class ManifestSpill {
  readonly #path: string
  #fd: number | undefined

  constructor (path: string) {
    this.#path = path
    this.#fd = openSync(path, 'w', 0o600)
  }

  add (block: ManifestBlock): void {
    if (this.#fd === undefined) throw new Error('the spill file is closed')
    const head = Buffer.alloc(8)
    head.writeUInt32BE(block.cid.bytes.length, 0)
    head.writeUInt32BE(block.bytes.length, 4)
    writeAll(this.#fd, head)
    writeAll(this.#fd, block.cid.bytes)
    writeAll(this.#fd, block.bytes)
  }

  close (): void {
    if (this.#fd !== undefined) closeSync(this.#fd)
    this.#fd = undefined
  }

  /** The blocks, in the order they were added, read one at a time. */
  * blocks (): Generator<ManifestBlock> {
    const fd = openSync(this.#path, 'r')
    try {
      const head = Buffer.alloc(8)
      for (;;) {
        const got = readFull(fd, head)
        if (got === 0) return
        if (got < 8) throw new CommitError(`the spilled manifest ${this.#path} ends inside a record`)
        const cidLength = head.readUInt32BE(0)
        const length = head.readUInt32BE(4)
        if (cidLength > MAX_CID || length > MAX_BLOCK) throw new CommitError(`the spilled manifest ${this.#path} has a record of ${length} bytes`)
        const cid = Buffer.alloc(cidLength)
        const bytes = Buffer.alloc(length)
        if (readFull(fd, cid) < cidLength || readFull(fd, bytes) < length) throw new CommitError(`the spilled manifest ${this.#path} ends inside a record`)
        yield { cid: CID.decode(cid), bytes }
      }
    } finally {
      closeSync(fd)
    }
  }
}

function writeAll (fd: number, buf: Uint8Array): void {
  for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off)
}

function readFull (fd: number, buf: Buffer): number {
  let off = 0
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, null)
    if (n === 0) break
    off += n
  }
  return off
}
