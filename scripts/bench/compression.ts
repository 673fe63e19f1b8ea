// How to compress the block exchange: the big tree's blocks, in the order a restore
// asks for them, sent as `/strata/blocks` BLOCK frames in 256 KiB batches, compressed
// in the ways doc/decisions/compression.md weighs: each block alone, one zstd context
// per stream flushed after every batch (as one stream, and as a provider's four
// streams sharing the batches round-robin), a dictionary trained per layer, against
// `tar | zstd -3` of the same tree.
//
//   node scripts/bench/compression.ts [--tree DIR] [--levels 1,3] [--json]
//
// Ratio = plain frame bytes / compressed bytes. CPU = this process's CPU seconds
// (every thread: zlib runs on the thread pool) to compress, and for the chosen
// scheme to decompress, the whole layer.

import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { constants, createZstdCompress, createZstdDecompress, zstdCompressSync } from 'node:zlib'
import type { ZstdCompress } from 'node:zlib'
import { CID } from 'multiformats/cid'
import { packTree } from '@strata/chunker'
import type { BlockLocation } from '@strata/chunker'
import { encodeBlockHeader, encodeFrameLength } from '../../packages/daemon/src/codec.ts'
import { bigTree } from './fixture.ts'
import { formatTable, parseFlags } from './measure.ts'

const BATCH = 256 * 1024

function cpu (): number {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

/** The tree's blocks as BLOCK frames, manifest first, then content in manifest order (distinct blocks only). */
async function frames (tree: string): Promise<Uint8Array[]> {
  const locations: BlockLocation[] = []
  const manifest: Array<{ cid: CID, bytes: Uint8Array }> = []
  const packed = await packTree(tree, { onBlock: (l) => locations.push(l), onManifestBlock: (b) => manifest.push(b) })
  manifest.unshift(...packed.blocks)
  const out: Uint8Array[] = []
  const seen = new Set<string>()
  const frame = (cid: CID, bytes: Uint8Array): void => {
    const head = encodeBlockHeader(cid)
    const f = new Uint8Array(head.length + bytes.length)
    f.set(head)
    f.set(bytes, head.length)
    out.push(Buffer.concat([encodeFrameLength(f.length), f]))
  }
  for (const b of manifest) frame(b.cid, b.bytes)
  for (const l of locations) {
    if (seen.has(l.cid)) continue
    seen.add(l.cid)
    const fh = await open(join(tree, l.path))
    const bytes = Buffer.alloc(l.length)
    await fh.read(bytes, 0, l.length, l.offset)
    await fh.close()
    frame(CID.parse(l.cid), bytes)
  }
  return out
}

/** Frames gathered into batches of about BATCH bytes, as the server writes them. */
function batches (list: Uint8Array[]): Buffer[] {
  const out: Buffer[] = []
  let cur: Uint8Array[] = []
  let size = 0
  for (const f of list) {
    cur.push(f)
    size += f.length
    if (size >= BATCH) {
      out.push(Buffer.concat(cur))
      cur = []
      size = 0
    }
  }
  if (cur.length > 0) out.push(Buffer.concat(cur))
  return out
}

async function flushed (z: ZstdCompress, batch: Buffer): Promise<void> {
  z.write(batch)
  await new Promise<void>((resolve) => { z.flush(constants.ZSTD_e_flush, () => resolve()) })
}

/** One zstd context per stream, flushed after each batch; batches go round-robin over `streams`. */
async function streamed (list: Buffer[], level: number, streams: number): Promise<{ bytes: number, cpu: number, out: Buffer[][] }> {
  const start = cpu()
  const zs = Array.from({ length: streams }, () => createZstdCompress({ params: { [constants.ZSTD_c_compressionLevel]: level } }))
  const out: Buffer[][] = zs.map(() => [])
  zs.forEach((z, i) => z.on('data', (b: Buffer) => out[i]!.push(b)))
  for (let i = 0; i < list.length; i++) await flushed(zs[i % streams]!, list[i]!)
  await Promise.all(zs.map(async (z) => { const ended = new Promise((resolve) => z.once('end', resolve)); z.end(); await ended }))
  const used = cpu() - start
  return { bytes: out.flat().reduce((n, b) => n + b.length, 0), cpu: used, out }
}

async function decompressCpu (chunks: Buffer[]): Promise<number> {
  const start = cpu()
  const d = createZstdDecompress()
  d.resume()
  for (const c of chunks) d.write(c)
  d.end()
  await new Promise((resolve) => d.on('end', resolve))
  return cpu() - start
}

function perBlock (list: Uint8Array[], level: number, dictionary?: Buffer): { bytes: number, cpu: number } {
  const start = cpu()
  let bytes = 0
  for (const f of list) bytes += zstdCompressSync(f, { params: { [constants.ZSTD_c_compressionLevel]: level }, ...(dictionary !== undefined ? { dictionary } : {}) }).length
  return { bytes, cpu: cpu() - start }
}

/** A 112 KiB dictionary trained by `zstd --train` on the layer's first 2000 blocks (what a producer could ship per layer). */
function trainDictionary (list: Uint8Array[]): Buffer | undefined {
  const dir = mkdtempSync('/var/tmp/datapath-dict-')
  try {
    const files = list.slice(0, 2000).map((f, i) => { const p = join(dir, `s${i}`); writeFileSync(p, f); return p })
    const r = spawnSync('zstd', ['-q', '--train', ...files, '-o', join(dir, 'dict')], { stdio: ['ignore', 'ignore', 'pipe'] })
    if (r.status !== 0) return undefined
    return spawnSync('cat', [join(dir, 'dict')]).stdout
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), { tree: '', levels: '1,3', json: false })
  const tree = flags.tree !== '' ? flags.tree : await bigTree()
  const levels = flags.levels.split(',').map(Number)
  const list = await frames(tree)
  const plain = list.reduce((n, f) => n + f.length, 0)
  const grouped = batches(list)
  const tar = spawnSync('bash', ['-c', 'set -o pipefail; tar -C "$1" -cf - . | zstd -3 -q -T1 | wc -c', 'tar', tree], { encoding: 'utf8', maxBuffer: 1 << 20 })
  const tarZst = Number(tar.stdout.trim())
  const rows: string[][] = [['scheme', 'level', 'MB', 'ratio', 'vs tar.zst', 'compress CPU s', 'decompress CPU s']]
  const row = (name: string, level: string, bytes: number, c: number | string, d: number | string = ''): void => {
    rows.push([name, level, (bytes / 1e6).toFixed(1), (plain / bytes).toFixed(2), (bytes / tarZst).toFixed(2), typeof c === 'number' ? c.toFixed(2) : c, typeof d === 'number' ? d.toFixed(2) : d])
  }
  row('none (frames)', '', plain, '')
  row('tar | zstd -3 (whole tree)', '3', tarZst, '')
  for (const level of levels) {
    const one = perBlock(list, level)
    row('each block alone', String(level), one.bytes, one.cpu)
    const s1 = await streamed(grouped, level, 1)
    row('stream context, 1 stream', String(level), s1.bytes, s1.cpu, await decompressCpu(s1.out[0]!))
    const s4 = await streamed(grouped, level, 4)
    row('stream context, 4 streams', String(level), s4.bytes, s4.cpu)
  }
  const dict = trainDictionary(list)
  if (dict !== undefined) {
    const d = perBlock(list, 3, dict)
    row(`each block, layer dictionary (${(dict.length / 1024).toFixed(0)} KiB)`, '3', d.bytes + dict.length, d.cpu)
  }
  if (flags.json) {
    console.log(JSON.stringify({ tree, frames: list.length, plain, tarZst, rows }, null, 2))
    return
  }
  console.log(`tree ${tree}: ${list.length} blocks, ${(plain / 1e6).toFixed(1)} MB of BLOCK frames, batches of ${BATCH / 1024} KiB`)
  console.log(formatTable(rows))
}

if (import.meta.main) await main()
