// FastCDC throughput on one core against node's sha256 (issue 2, benchmark 1).
//
//   node scripts/bench/chunker.ts [--mib 256] [--reps 5] [--json] [--no-real-files]
//
// Builds --mib MiB of mixed data in memory, the same bytes on every run: segments
// of random bytes (AES-CTR keystream), repeated text, zeros and the concatenated
// files of the big-tree fixture (sorted by path; installed first if missing). Then
// measures, single-threaded, over the whole buffer as one stream:
//   (a) sha256 alone, one digest per chunk, over the chunks FastCDC cuts (the baseline)
//   (b) FastCDC cut-finding alone
//   (c) FastCDC + one sha256 per chunk, as the packer does it
// One untimed pass of each warms the JIT; the three then alternate for --reps rounds.

import { createCipheriv, createHash, hash } from 'node:crypto'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { AVG_CHUNK, cutPoint, MAX_CHUNK, MIN_CHUNK } from '../../packages/chunker/src/fastcdc.ts'
import { bigTree } from './fixture.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'

const TARGET_MBPS = 500

type Kind = 'random' | 'text' | 'zeros' | 'files'

/** splitmix32: a tiny seeded generator, so that the data never depends on Math.random. */
function prng (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x9e3779b9) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32
  }
}

const WORDS = ('the layer store keeps every block once and a step that hits restores its upper dir ' +
  'without running anything export function const return await import from module error path ' +
  'file directory overlay chunk hash manifest index node package version license dependencies').split(' ')

/** A block of text-like lines, repeated to fill `size` bytes. */
function textSegment (size: number, rand: () => number): Uint8Array {
  const lines: string[] = []
  const blockSize = 1024 + Math.floor(rand() * 63 * 1024)
  let length = 0
  for (let n = 0; length < blockSize; n++) {
    const words = Array.from({ length: 4 + Math.floor(rand() * 12) }, () => WORDS[Math.floor(rand() * WORDS.length)]!)
    const line = `${n}: ${words.join(' ')}\n`
    lines.push(line)
    length += line.length
  }
  const block = Buffer.from(lines.join(''))
  const out = Buffer.alloc(size)
  for (let at = 0; at < size; at += block.length) block.copy(out, at, 0, Math.min(block.length, size - at))
  return out
}

/** Concatenated contents of the regular files under `root`, in sorted path order, up to `limit` bytes. */
async function realFiles (root: string, limit: number): Promise<Buffer> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true })
  const paths = entries.filter((d) => d.isFile()).map((d) => join(d.parentPath, d.name)).sort()
  const parts: Buffer[] = []
  let total = 0
  for (const p of paths) {
    if (total >= limit) break
    const b = await readFile(p)
    parts.push(b)
    total += b.length
  }
  if (total < limit) throw new RangeError(`${root} holds only ${total} bytes of files, ${limit} wanted`)
  return Buffer.concat(parts, total).subarray(0, limit)
}

async function mixedData (size: number, withFiles: boolean): Promise<{ data: Buffer, bytesByKind: Record<Kind, number> }> {
  const rand = prng(0x5747a7a)
  const kinds: Kind[] = []
  const sizes: number[] = []
  for (let total = 0; total < size;) {
    const r = rand()
    const kind: Kind = r < 0.3 ? 'random' : r < 0.5 ? 'text' : r < 0.6 ? 'zeros' : 'files'
    const len = Math.min(size - total, 256 * 1024 + Math.floor(rand() * 8 * 1024 * 1024))
    kinds.push(withFiles || kind !== 'files' ? kind : 'text')
    sizes.push(len)
    total += len
  }
  const bytesByKind: Record<Kind, number> = { random: 0, text: 0, zeros: 0, files: 0 }
  kinds.forEach((k, i) => { bytesByKind[k] += sizes[i]! })
  const files = bytesByKind.files > 0 ? await realFiles(await bigTree(), bytesByKind.files) : Buffer.alloc(0)
  const keystream = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0))
  const data = Buffer.alloc(size)
  let at = 0
  let filesAt = 0
  kinds.forEach((kind, i) => {
    const len = sizes[i]!
    if (kind === 'random') keystream.update(Buffer.alloc(len)).copy(data, at)
    else if (kind === 'text') data.set(textSegment(len, rand), at)
    else if (kind === 'files') {
      files.copy(data, at, filesAt, filesAt + len)
      filesAt += len
    }
    at += len
  })
  return { data, bytesByKind }
}

function cutLengths (data: Uint8Array): number[] {
  const lengths: number[] = []
  for (let pos = 0; pos < data.length;) {
    const len = cutPoint(data, pos, data.length)
    lengths.push(len)
    pos += len
  }
  return lengths
}

function hashOnly (data: Uint8Array, lengths: number[]): number {
  let pos = 0
  let check = 0
  for (const len of lengths) {
    check ^= hash('sha256', data.subarray(pos, pos + len), 'buffer')[0]!
    pos += len
  }
  return check
}

function cutOnly (data: Uint8Array): number {
  let count = 0
  for (let pos = 0; pos < data.length; count++) pos += cutPoint(data, pos, data.length)
  return count
}

function cutAndHash (data: Uint8Array): number {
  let check = 0
  for (let pos = 0; pos < data.length;) {
    const len = cutPoint(data, pos, data.length)
    check ^= hash('sha256', data.subarray(pos, pos + len), 'buffer')[0]!
    pos += len
  }
  return check
}

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), { mib: '256', reps: '5', json: false, 'real-files': true })
  const mib = Number.parseInt(flags.mib, 10)
  const reps = Number.parseInt(flags.reps, 10)
  if (!(mib >= 1) || !(reps >= 1)) throw new TypeError('--mib and --reps must be positive integers')
  const progress = (line: string): void => { process.stderr.write(line + '\n') }

  progress(`building ${mib} MiB of mixed data`)
  const { data, bytesByKind } = await mixedData(mib * 1024 * 1024, flags['real-files'])
  const lengths = cutLengths(data)
  const dataDigest = createHash('sha256').update(data).digest('hex')

  const cases = {
    'sha256 per chunk (baseline)': (): number => hashOnly(data, lengths),
    'fastcdc cut-finding': (): number => cutOnly(data),
    'fastcdc + sha256 per chunk': (): number => cutAndHash(data)
  }
  type Case = keyof typeof cases
  const seconds = new Map<Case, number[]>(Object.keys(cases).map((k) => [k as Case, []]))
  progress('warming up')
  for (const run of Object.values(cases)) run()
  for (let rep = 1; rep <= reps; rep++) {
    for (const [name, run] of Object.entries(cases) as Array<[Case, () => number]>) {
      const started = process.hrtime.bigint()
      run()
      const s = Number(process.hrtime.bigint() - started) / 1e9
      seconds.get(name)!.push(s)
      progress(`  rep ${rep}/${reps} ${name}: ${(data.length / 1e6 / s).toFixed(0)} MB/s`)
    }
  }

  const mbps = (s: number): number => data.length / 1e6 / s
  const results = Object.fromEntries([...seconds].map(([name, list]) => {
    const t = summarize(list)
    // The fastest time is the highest throughput: min and max swap.
    return [name, { medianMBps: mbps(t.median), minMBps: mbps(t.max), maxMBps: mbps(t.min), seconds: list }]
  })) as Record<Case, { medianMBps: number, minMBps: number, maxMBps: number, seconds: number[] }>
  const baseline = results['sha256 per chunk (baseline)'].medianMBps
  const combined = results['fastcdc + sha256 per chunk'].medianMBps
  const chunks = {
    count: lengths.length,
    meanBytes: Math.round(data.length / lengths.length),
    atMax: lengths.filter((l) => l === MAX_CHUNK).length,
    params: { min: MIN_CHUNK, avg: AVG_CHUNK, max: MAX_CHUNK }
  }

  if (flags.json) {
    console.log(JSON.stringify({
      bytes: data.length,
      bytesByKind,
      dataSha256: dataDigest,
      chunks,
      reps,
      node: process.version,
      results,
      ratiosToBaseline: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.medianMBps / baseline])),
      target: { chunkAndHashMBps: TARGET_MBPS, met: combined >= TARGET_MBPS }
    }, null, 2))
    return
  }
  const share = (k: Kind): string => `${k} ${(100 * bytesByKind[k] / data.length).toFixed(0)}%`
  console.log('')
  console.log(`${mib} MiB mixed data (${(['random', 'text', 'zeros', 'files'] as Kind[]).map(share).join(', ')}), sha256 ${dataDigest.slice(0, 16)}…`)
  console.log(`${chunks.count} chunks, mean ${(chunks.meanBytes / 1024).toFixed(1)} KiB, ${chunks.atMax} at the ${MAX_CHUNK / 1024} KiB maximum; ${reps} reps, one thread, node ${process.version}`)
  console.log('')
  const rows = [['', 'median MB/s', 'min', 'max', 'vs sha256']]
  for (const [name, r] of Object.entries(results)) {
    rows.push([name, r.medianMBps.toFixed(0), r.minMBps.toFixed(0), r.maxMBps.toFixed(0), `${(r.medianMBps / baseline).toFixed(2)}x`])
  }
  console.log(formatTable(rows))
  console.log('')
  console.log(`target: fastcdc + sha256 >= ${TARGET_MBPS} MB/s on one core: ${combined >= TARGET_MBPS ? 'met' : 'NOT met'} (${combined.toFixed(0)} MB/s)`)
}

try {
  await main()
} catch (err) {
  console.error(`chunker: ${(err as Error).message}`)
  process.exitCode = 1
}
