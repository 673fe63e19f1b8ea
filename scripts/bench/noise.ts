// Issue C's benchmark 3: throughput of one libp2p stream over loopback, by transport stack.
//
//   node scripts/bench/noise.ts [--mib 512] [--reps 3] [--write-kib 256] [--json]
//
// The receiver runs in a child process (its own core, as a peer does); the sender
// writes --mib MiB on one stream in --write-kib writes, waiting for 'drain', and the
// time runs from the first write to the receiver's one-byte answer after it has read
// everything. Stacks, alternated within each rep:
//   tcp            raw node:net sockets: the reference
//   plain+yamux    libp2p TCP + yamux, no encryption (a key exchange only, for the peer id)
//   noise+yamux    libp2p TCP + Noise (the library's default crypto) + yamux
//   noise+yamux strata   the same with the daemon's Noise crypto (packages/daemon/src/noise-crypto.ts):
//                  what strata runs
//   tls+yamux      libp2p TCP + @libp2p/tls (TLS 1.3 in node:tls, AES-GCM) + yamux
// Prints MB/s (median, min, max), each stack's ratio to raw TCP and to plain+yamux, and
// the CPU each side used per GB moved (process.cpuUsage over the timed transfer).
// Profile one side with `--cpu-prof` on this script (sender) or `--profile-receiver`.

import { fork } from 'node:child_process'
import { once } from 'node:events'
import { createServer, connect } from 'node:net'
import type { AddressInfo, Socket } from 'node:net'
import { loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, publicKeyFromProtobuf, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import type { ConnectionEncrypter, MessageStream, PrivateKey, SecuredConnection, Stream } from '@libp2p/interface'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { tcp } from '@libp2p/tcp'
import { tls } from '@libp2p/tls'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { noiseCrypto } from '../../packages/daemon/src/noise-crypto.ts'
import { formatTable, parseFlags, summarize } from './measure.ts'

const PROTOCOL = '/strata-bench/throughput/1'
const STACKS = ['tcp', 'plain+yamux', 'noise+yamux', 'noise+yamux strata', 'tls+yamux'] as const
type StackName = typeof STACKS[number]

/**
 * No encryption at all: each side sends its public key once (so libp2p still learns
 * the remote peer id) and the connection carries plaintext after that. For
 * measuring what Noise costs; never for a fleet.
 */
function plaintext (): (components: { privateKey: PrivateKey }) => ConnectionEncrypter {
  return (components) => {
    const exchange = async (connection: MessageStream, options?: { signal?: AbortSignal }): Promise<SecuredConnection> => {
      const lp = lpStream(connection, { maxDataLength: 1024 })
      await lp.write(publicKeyToProtobuf(components.privateKey.publicKey), options)
      const remote = publicKeyFromProtobuf((await lp.read(options)).subarray())
      return { connection: lp.unwrap(), remotePeer: peerIdFromPublicKey(remote) }
    }
    return { protocol: '/strata-bench/plaintext/1', secureInbound: exchange, secureOutbound: exchange }
  }
}

async function node (stack: StackName, listen: boolean): Promise<Libp2p> {
  return await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: listen ? ['/ip4/127.0.0.1/tcp/0'] : [] },
    transports: [tcp()],
    connectionEncrypters: [stack === 'plain+yamux' ? plaintext() : stack === 'tls+yamux' ? tls() : stack === 'noise+yamux' ? noise() : noise({ crypto: noiseCrypto })],
    streamMuxers: [yamux()]
  })
}

// ---- receiver (child process) ----

/** CPU seconds (user + system) of this process since `since`. */
function cpuSeconds (since: NodeJS.CpuUsage | undefined): number {
  const d = process.cpuUsage(since)
  return (d.user + d.system) / 1e6
}

async function receive (stack: StackName): Promise<void> {
  if (stack === 'tcp') {
    const server = createServer((socket) => {
      let cpu: NodeJS.CpuUsage | undefined
      socket.on('data', () => { cpu ??= process.cpuUsage() })
      socket.on('end', () => {
        process.send!({ cpu: cpuSeconds(cpu) })
        socket.end(Buffer.of(1))
      })
      socket.on('error', () => {})
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    process.send!({ port: (server.address() as AddressInfo).port })
  } else {
    const n = await node(stack, true)
    await n.handle(PROTOCOL, (stream: Stream) => {
      void (async () => {
        let cpu: NodeJS.CpuUsage | undefined
        for await (const _ of stream) cpu ??= process.cpuUsage()
        process.send!({ cpu: cpuSeconds(cpu) })
        stream.send(Uint8Array.of(1))
        await stream.close()
      })().catch(() => { stream.abort(new Error('receiver failed')) })
    })
    process.send!({ addr: n.getMultiaddrs()[0]!.toString() })
  }
  await once(process, 'disconnect')
  process.exit(0)
}

// ---- sender ----

async function sendTcp (port: number, total: number, chunk: Uint8Array): Promise<number> {
  const socket: Socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const answered = once(socket, 'data')
  const t0 = performance.now()
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!socket.write(chunk)) await once(socket, 'drain')
  }
  socket.end()
  await answered
  const ms = performance.now() - t0
  socket.destroy()
  return ms
}

async function sendLibp2p (sender: Libp2p, addr: string, total: number, chunk: Uint8Array): Promise<number> {
  const stream = await sender.dialProtocol(multiaddr(addr), PROTOCOL)
  const answered = (async () => { for await (const _ of stream) return })()
  const t0 = performance.now()
  for (let sent = 0; sent < total; sent += chunk.length) {
    // The stream copies nothing: a fresh view per write, as a real sender's blocks are.
    if (!stream.send(chunk.subarray())) await stream.onDrain()
  }
  await stream.close()
  await answered
  return performance.now() - t0
}

interface Row { stack: StackName, mbps: number[], senderCpuPerGb: number[], receiverCpuPerGb: number[] }

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), { mib: '512', reps: '3', 'write-kib': '256', json: false as boolean, 'profile-receiver': false as boolean, role: '', stack: '' })
  if (flags.role === 'receiver') return await receive(flags.stack as StackName)
  const total = Number(flags.mib) * 1024 * 1024
  const reps = Number(flags.reps)
  const chunk = new Uint8Array(Number(flags['write-kib']) * 1024).fill(7)
  const rows: Row[] = STACKS.map((stack) => ({ stack, mbps: [], senderCpuPerGb: [], receiverCpuPerGb: [] }))
  const load = [loadavg()[0]!]
  const script = fileURLToPath(import.meta.url)
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? rows : [...rows].reverse()
    for (const row of order) {
      const child = fork(script, ['--role', 'receiver', '--stack', row.stack], {
        execArgv: flags['profile-receiver'] === true && row.stack.startsWith('noise') ? ['--cpu-prof'] : []
      })
      try {
        const [ready] = await once(child, 'message') as [{ port?: number, addr?: string }]
        let ms: number
        let cpu: NodeJS.CpuUsage
        let received = once(child, 'message') as Promise<[{ cpu: number }]>
        if (row.stack === 'tcp') {
          cpu = process.cpuUsage()
          ms = await sendTcp(ready.port!, total, chunk)
        } else {
          const sender = await node(row.stack, false)
          try {
            await sendLibp2p(sender, ready.addr!, 1024, chunk) // connect and warm up, untimed
            await received
            received = once(child, 'message') as Promise<[{ cpu: number }]>
            cpu = process.cpuUsage()
            ms = await sendLibp2p(sender, ready.addr!, total, chunk)
          } finally {
            await sender.stop()
          }
        }
        row.senderCpuPerGb.push(cpuSeconds(cpu) / (total / 1e9))
        row.receiverCpuPerGb.push((await received)[0].cpu / (total / 1e9))
        row.mbps.push(total / 1e6 / (ms / 1000))
        process.stderr.write(`rep ${rep + 1}/${reps} ${row.stack}: ${(total / 1e6 / (ms / 1000)).toFixed(0)} MB/s\n`)
      } finally {
        child.disconnect()
        await once(child, 'exit')
      }
    }
  }
  load.push(loadavg()[0]!)
  const med = (r: Row): number => summarize(r.mbps).median
  const tcpRow = rows.find((r) => r.stack === 'tcp')!
  const plainRow = rows.find((r) => r.stack === 'plain+yamux')!
  const result = rows.map((r) => ({ stack: r.stack, ...summarize(r.mbps), vsTcp: med(r) / med(tcpRow), vsPlain: med(r) / med(plainRow), senderCpuPerGb: summarize(r.senderCpuPerGb).median, receiverCpuPerGb: summarize(r.receiverCpuPerGb).median }))
  if (flags.json === true) {
    process.stdout.write(JSON.stringify({ mib: Number(flags.mib), writeKib: Number(flags['write-kib']), reps, load, result }) + '\n')
    return
  }
  process.stdout.write(`one stream over loopback, ${flags.mib} MiB in ${flags['write-kib']} KiB writes, ${reps} reps; load average ${load.map((l) => l.toFixed(2)).join(' -> ')}\n`)
  process.stdout.write(formatTable([
    ['stack', 'MB/s median', 'min', 'max', 'x raw tcp', 'x plain+yamux', 'CPU s/GB sender', 'CPU s/GB receiver'],
    ...result.map((r) => [r.stack, r.median.toFixed(0), r.min.toFixed(0), r.max.toFixed(0), r.vsTcp.toFixed(2), r.vsPlain.toFixed(2), r.senderCpuPerGb.toFixed(2), r.receiverCpuPerGb.toFixed(2)])
  ]) + '\n')
}

await main()
