// Daemons that know nothing of each other meet through one DNS name, served by a
// real DNS server (dnsmasq) in a host of its own, and meet again after every one
// of them was replaced, once the name points at the new VMs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { createCluster, terminate } from '../scripts/netns.ts'
import type { Host } from '../scripts/netns.ts'
import { bin, strataOn, workDir } from './helpers.ts'
import { until } from '@strata/testing'

const PORT = 7401
const discoveryModule = join(import.meta.dirname, '..', 'packages', 'daemon', 'src', 'discovery.ts')

interface Status { peerId: string, peers: string[] }

/** dnsmasq on `host`, answering from `hostsFile` (re-read on SIGHUP) and the TXT records given; resolves once it serves. */
async function startDnsmasq (host: Host, hostsFile: string, txt: string[]): Promise<ChildProcess> {
  const child = host.spawn('dnsmasq', [
    '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--bind-interfaces',
    `--listen-address=${host.address}`, '--port=53', `--addn-hosts=${hostsFile}`, '--user=root', '--pid-file',
    '--local-ttl=0', '--log-facility=-', ...txt.map((t) => `--txt-record=${t}`)
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  child.stderr?.on('data', (c: Buffer) => { log += c.toString() })
  await until('dnsmasq to start', () => {
    if (child.exitCode !== null) throw new Error(`dnsmasq exited with ${child.exitCode}: ${log}`)
    return /read .*addn|started, version/.test(log)
  }, { everyMs: 50 })
  return child
}

/** What a daemon's discovery resolves `addr` to, asked from inside `host` against `server`. */
async function resolveOn (host: Host, addr: string, server: string, expectError?: RegExp): Promise<string[]> {
  const script = [
    `const { Discovery } = await import(${JSON.stringify(discoveryModule)})`,
    "const { pino } = await import('pino')",
    `const d = new Discovery({ logger: pino({ level: 'silent' }) }, { bootstrap: [], intervalMs: 0, dnsServer: ${JSON.stringify(server)} })`,
    "const { multiaddr } = await import('@multiformats/multiaddr')",
    `const r = await d.resolve(multiaddr(${JSON.stringify(addr)}), AbortSignal.timeout(10000))`,
    'console.log(JSON.stringify({ addrs: r.addrs.map(String), error: r.error }))'
  ].join('\n')
  const r = await host.exec(process.execPath, ['--input-type=module', '-e', script], { cwd: join(import.meta.dirname, '..', 'packages', 'daemon'), timeout: 30_000 })
  const out = JSON.parse(r.stdout) as { addrs: string[], error?: string }
  if (expectError !== undefined) assert.match(out.error ?? '', expectError)
  else assert.equal(out.error, undefined)
  return out.addrs.sort()
}

async function status (host: Host, dataDir: string, cwd: string): Promise<Status | undefined> {
  const r = await strataOn(host, ['status', '--json', '--data-dir', dataDir], cwd)
  return r.exitCode === 0 ? JSON.parse(r.stdout) as Status : undefined
}

/** Waits until each daemon answers and is connected to every other; returns their peer ids. */
async function meshed (fleet: Array<{ host: Host, dataDir: string, log: () => string }>, cwd: string): Promise<string[]> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const all = await Promise.all(fleet.map(async (d) => await status(d.host, d.dataDir, cwd)))
    const ids = all.map((s) => s?.peerId)
    if (all.every((s) => s !== undefined && ids.every((id) => id === s.peerId || s.peers.includes(id!)))) return ids as string[]
    if (Date.now() > deadline) assert.fail(`not connected: ${JSON.stringify(all)}\n${fleet.map((d) => d.log()).join('\n')}`)
    await delay(250)
  }
}

test('three daemons with fresh data dirs meet through every A record of one name; replaced by three new ones elsewhere, they meet again once the name is updated; /dnsaddr/ TXT records name peers too', { timeout: 240_000 }, async (t) => {
  const cluster = await createCluster({ hosts: 8, prefix: `discovery${process.pid}` })
  t.after(() => cluster.destroy())
  const dir = workDir(t, 'discovery-netns')
  const [h1, h2, h3, dnsHost, h5, h6, h7, h8] = cluster.hosts as [Host, Host, Host, Host, Host, Host, Host, Host]
  const server = dnsHost.address
  const hostsFile = join(dir, 'hosts')
  const records = (hosts: Host[]): void => writeFileSync(hostsFile, hosts.map((h) => `${h.address} fleet.internal\n`).join(''))
  records([h1, h2, h3])
  let dns = await startDnsmasq(dnsHost, hostsFile, [])

  // Every A record of the name, as the daemon resolves it.
  assert.deepEqual(await resolveOn(h8, `/dns4/fleet.internal/tcp/${PORT}`, server), [h1, h2, h3].map((h) => `/ip4/${h.address}/tcp/${PORT}`).sort())

  const start = (host: Host, name: string, bootstrap: string): { host: Host, dataDir: string, child: ChildProcess, log: () => string } => {
    const dataDir = join(dir, name)
    mkdirSync(dataDir)
    const child = host.spawn(process.execPath, [bin, 'daemon', '--data-dir', dataDir, '--listen', `/ip4/${host.address}/tcp/${PORT}`, '--replicas', '0',
      '--bootstrap', bootstrap, '--dns-server', server, '--bootstrap-interval', '1'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, STRATA_LOG_LEVEL: 'info' } })
    let log = ''
    child.stderr?.on('data', (c: Buffer) => { log = (log + c.toString()).slice(-4000) })
    return { host, dataDir, child, log: () => `${name}: ${log}` }
  }
  const name = `/dns4/fleet.internal/tcp/${PORT}`
  const first = [start(h1, 'a1', name), start(h2, 'a2', name), start(h3, 'a3', name)]
  const firstIds = await meshed(first, dir)

  // A /dnsaddr/ name: TXT records `dnsaddr=<multiaddr with peer id>`, one per peer.
  const txt = first.map((d, i) => `_dnsaddr.boot.internal,dnsaddr=/ip4/${d.host.address}/tcp/${PORT}/p2p/${firstIds[i]!}`)
  // Bounds: 70 records give 64 addresses; a chain of /dnsaddr/ names is followed 4 deep.
  for (let i = 0; i < 70; i++) txt.push(`_dnsaddr.many.internal,dnsaddr=/ip4/10.231.1.${i + 1}/tcp/${PORT}`)
  for (let i = 0; i < 4; i++) txt.push(`_dnsaddr.n${i}.internal,dnsaddr=/dnsaddr/n${i + 1}.internal`)
  txt.push(`_dnsaddr.n4.internal,dnsaddr=/ip4/${h1.address}/tcp/${PORT}`)
  await terminate(dns)
  dns = await startDnsmasq(dnsHost, hostsFile, txt)
  assert.deepEqual(await resolveOn(h8, '/dnsaddr/boot.internal', server), first.map((d, i) => `/ip4/${d.host.address}/tcp/${PORT}/p2p/${firstIds[i]!}`).sort())
  assert.deepEqual(await resolveOn(h8, `/dnsaddr/boot.internal/p2p/${firstIds[1]!}`, server), [`/ip4/${h2.address}/tcp/${PORT}/p2p/${firstIds[1]!}`])
  assert.equal((await resolveOn(h8, '/dnsaddr/many.internal', server)).length, 64)
  assert.deepEqual(await resolveOn(h8, '/dnsaddr/n1.internal', server), [`/ip4/${h1.address}/tcp/${PORT}`])
  assert.deepEqual(await resolveOn(h8, '/dnsaddr/n0.internal', server, /\/dnsaddr\/n4\.internal nests deeper than 4/), [])
  const joiner = start(h8, 'joiner', '/dnsaddr/boot.internal')
  await meshed([...first, joiner], dir)
  await Promise.all([...first, joiner].map(async (d) => { await terminate(d.child) }))

  // Every VM replaced: new identities, new data dirs, new addresses. The name still
  // points at the old ones, so they cannot meet until it is updated...
  const second = [start(h5, 'b1', name), start(h6, 'b2', name), start(h7, 'b3', name)]
  for (const d of second) {
    let s: Status | undefined
    await until('the daemon\'s status', async () => (s = await status(d.host, d.dataDir, dir)) !== undefined, { everyMs: 200 })
    assert.ok(s !== undefined && !firstIds.includes(s.peerId))
    assert.deepEqual(s.peers, [], d.log())
  }
  // ...and meet by re-resolving it once it is.
  records([h5, h6, h7])
  process.kill(dns.pid!, 'SIGHUP')
  const secondIds = await meshed(second, dir)
  assert.equal(new Set([...firstIds, ...secondIds]).size, 6)
})
