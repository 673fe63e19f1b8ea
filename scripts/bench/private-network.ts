// What a private network (`strata daemon --psk-file`) costs a layer fetch: the same
// layer fetched from one peer over an open fleet (the baseline) and over a fleet with
// a pre-shared key (XSalsa20 under the key around every connection, then Noise).
//
//   node scripts/bench/private-network.ts [--mib 64] [--reps 3] [--json]
//
// Two daemons per fleet, in this process, on 127.0.0.1 (so one core's worth of
// sender and receiver share the machine). Timed: `fetchLayer` on the reader, from the
// call to the layer committed in its store, with the producer given as a hint.
// Untimed: removing the layer from the reader before each rep. The two fleets
// alternate which goes first in every rep.

import { createCipheriv, createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { createDaemon, writePsk } from '../../packages/daemon/src/index.ts'
import type { Daemon } from '../../packages/daemon/src/index.ts'
import { removeOnExit } from './cleanup.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'
import type { Summary } from './measure.ts'

const flags = parseFlags(process.argv.slice(2), { mib: '64', reps: '3', json: false })
const mib = Number(flags.mib)
const reps = Number(flags.reps)
if (!Number.isInteger(mib) || mib < 1 || !Number.isInteger(reps) || reps < 1) throw new TypeError('--mib and --reps want whole numbers >= 1')

const cache = process.env.STRATA_BENCH_CACHE ?? '/var/tmp/strata-bench'
mkdirSync(cache, { recursive: true })
const scratch = removeOnExit(mkdtempSync(join(cache, 'pnet-')))
const log = (msg: string): void => { process.stderr.write(`${msg}\n`) }

function pseudoRandom (seed: string, n: number): Buffer {
  const key = createHash('sha256').update(seed).digest()
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n))
}

async function daemon (name: string, pskFile?: string): Promise<Daemon> {
  const d = await createDaemon({
    dataDir: join(scratch, name),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    replicas: 0,
    socket: false,
    logger: pino({ level: 'silent' }),
    ...(pskFile !== undefined ? { pskFile } : {})
  })
  await d.start()
  return d
}

const pskFile = join(scratch, 'swarm.key')
await writePsk(pskFile)
const fleets: Array<{ name: string, producer: Daemon, reader: Daemon }> = []
try {
  for (const [name, psk] of [['open', undefined], ['psk', pskFile]] as const) {
    const producer = await daemon(`${name}-producer`, psk)
    const reader = await daemon(`${name}-reader`, psk)
    fleets.push({ name, producer, reader })
    await reader.node.dial(producer.node.getMultiaddrs()[0]!)
  }
  // The same layer in both fleets: 8 files of pseudo-random bytes, fixed times.
  const files = 8
  let root = ''
  for (const f of fleets) {
    const upper = join(scratch, `${f.name}-upper`)
    mkdirSync(upper)
    for (let i = 0; i < files; i++) {
      const p = join(upper, `f${i}`)
      writeFileSync(p, pseudoRandom(`pnet-${i}`, Math.floor(mib * 1024 * 1024 / files)))
      utimesSync(p, 1_000_000, 1_000_000)
    }
    utimesSync(upper, 1_000_000, 1_000_000)
    const layer = await f.producer.commit(upper)
    root = layer.root.toString()
  }
  const samples: Record<string, number[]> = { open: [], psk: [] }
  const bytes = mib * 1024 * 1024
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? fleets : [...fleets].reverse()
    for (const f of order) {
      const layer = (await f.producer.store.listLayers())[0]!.root
      if (await f.reader.store.has(layer)) await f.reader.removeLayer(layer)
      const t0 = performance.now()
      await f.reader.fetchLayer(layer, { hints: [f.producer.node.peerId] })
      const s = (performance.now() - t0) / 1000
      samples[f.name]!.push(s)
      log(`rep ${rep + 1}/${reps} ${f.name}: ${s.toFixed(2)} s (${(bytes / s / 1e6).toFixed(1)} MB/s)`)
    }
  }
  const open = summarize(samples.open!)
  const psk = summarize(samples.psk!)
  const row = (name: string, s: Summary): string[] => [name, s.median.toFixed(2), s.min.toFixed(2), s.max.toFixed(2), (bytes / s.median / 1e6).toFixed(1), (s.median / open.median).toFixed(2) + 'x']
  if (flags.json) {
    process.stdout.write(JSON.stringify({ mib, reps, root, load: loadavg()[0], open, psk, ratio: psk.median / open.median }) + '\n')
  } else {
    process.stdout.write(`fetch of a ${mib} MiB layer (${files} files) from one peer on loopback, ${reps} reps, load ${loadavg()[0]!.toFixed(1)}\n`)
    process.stdout.write(formatTable([['fleet', 'median s', 'min s', 'max s', 'MB/s', 'vs open'], row('open', open), row('psk', psk)]) + '\n')
  }
} finally {
  for (const f of fleets) {
    await f.reader.stop()
    await f.producer.stop()
  }
}
