import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createCluster } from '../scripts/netns.ts'
import type { Cluster, Host } from '../scripts/netns.ts'
import { bin, daemonReady, strataOn } from './helpers.ts'

function digestTree (dir: string, prefix = ''): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of readdirSync(dir).sort()) {
    const p = `${dir}/${name}`
    const st = statSync(p)
    if (st.isDirectory()) Object.assign(out, { [`${prefix}${name}/`]: st.mode.toString(8) }, digestTree(p, `${prefix}${name}/`))
    else out[`${prefix}${name}`] = `${st.mode.toString(8)} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`
  }
  return out
}

test('host 1 runs a pipeline (MISS); host 2 HITs every step from peers with a byte-identical tree; host 3, holding most blocks, fetches only the rest', async (t) => {
  const cluster: Cluster = await createCluster({ hosts: 3 })
  t.after(() => cluster.destroy())
  const dir = mkdtempSync('/var/tmp/strata-fleet-netns-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const [h1, h2, h3] = cluster.hosts as [Host, Host, Host]
  const d1 = join(dir, 'h1')
  const d2 = join(dir, 'h2')
  mkdirSync(d1)
  mkdirSync(d2)
  const d3 = join(dir, 'h3')
  mkdirSync(d3)
  const tag = `strata-fleet-${process.pid}-${Date.now()}`
  // The blob is the same bytes wherever it is made: host 3 makes it under another key.
  const pipeline = (salt: string): string => [
    'base: host',
    `salt: ${salt}`,
    'steps:',
    '  - name: make',
    // The checkout holds the hosts' data dirs, which change as they work: the steps read none of it.
    '    filter: []',
    `    run: mkdir -p /opt/${tag} && seq 1 450000 > /opt/${tag}/blob && echo STAGE=made >> "$STRATA_ENV"`,
    '  - name: use',
    '    filter: []',
    `    run: test "$STAGE" = made && sha256sum /opt/${tag}/blob > /opt/${tag}/sum && mkdir /opt/${tag}/d && echo x > /opt/${tag}/d/x`,
    ''
  ].join('\n')
  writeFileSync(join(dir, 'strata.yml'), pipeline(tag))
  writeFileSync(join(dir, 'other.yml'), pipeline(`${tag}-other`))

  const stdio = { stdio: ['ignore', 'ignore', 'pipe'] as ['ignore', 'ignore', 'pipe'] }
  const p1 = h1.spawn(process.execPath, [bin, 'daemon', '--data-dir', d1, '--listen', `/ip4/${h1.address}/tcp/4001`, '--replicas', '0'], stdio)
  let err1 = ''
  p1.stderr?.on('data', (c: Buffer) => { err1 += c.toString() })
  const s1 = await daemonReady(h1, d1, dir)
  const p2 = h2.spawn(process.execPath, [bin, 'daemon', '--data-dir', d2, '--listen', `/ip4/${h2.address}/tcp/4001`, '--replicas', '0', '--bootstrap', `/ip4/${h1.address}/tcp/4001/p2p/${s1.peerId}`], stdio)
  let err2 = ''
  p2.stderr?.on('data', (c: Buffer) => { err2 += c.toString() })
  await daemonReady(h2, d2, dir, s1.peerId)
  const p3 = h3.spawn(process.execPath, [bin, 'daemon', '--data-dir', d3, '--listen', `/ip4/${h3.address}/tcp/4001`, '--replicas', '0', '--bootstrap', `/ip4/${h1.address}/tcp/4001/p2p/${s1.peerId}`], stdio)
  let err3 = ''
  p3.stderr?.on('data', (c: Buffer) => { err3 += c.toString() })
  await daemonReady(h3, d3, dir, s1.peerId)

  const first = await strataOn(h1, ['run', '--data-dir', d1], dir)
  assert.equal(first.exitCode, 0, first.stderr + err1)
  assert.match(first.stderr, /^make: MISS/m)
  assert.match(first.stderr, /^use: MISS/m)

  const second = await strataOn(h2, ['run', '--data-dir', d2], dir)
  assert.equal(second.exitCode, 0, second.stderr + err2)
  assert.match(second.stderr, /^make: HIT peer \(1 provider, [\d.]+ [kM]B in [\d.]+s\)$/m)
  assert.match(second.stderr, /^use: HIT peer \(1 provider, /m)
  assert.match(second.stderr, /2 steps, 2 cached/)

  const status1 = JSON.parse((await strataOn(h1, ['status', '--json', '--data-dir', d1], dir)).stdout) as { layers: Array<{ root: string, copies: number }> }
  const status2 = JSON.parse((await strataOn(h2, ['status', '--json', '--data-dir', d2], dir)).stdout) as { layers: Array<{ root: string }>, counters: { bytesFromPeers: number } }
  assert.deepEqual(status2.layers.map((l) => l.root).sort(), status1.layers.map((l) => l.root).sort())
  for (const l of status1.layers) assert.deepEqual(digestTree(join(d2, 'layers', l.root)), digestTree(join(d1, 'layers', l.root)))
  assert.ok(status2.counters.bytesFromPeers >= 3_000_000)
  assert.ok(status1.layers.every((l) => l.copies === 2), `copies: ${JSON.stringify(status1.layers)}`)

  // Host 3 makes the same blob under another key, then runs host 1's pipeline.
  const own = await strataOn(h3, ['run', '-f', 'other.yml', '--data-dir', d3], dir)
  assert.equal(own.exitCode, 0, own.stderr + err3)
  assert.match(own.stderr, /^make: MISS/m)
  const third = await strataOn(h3, ['run', '--data-dir', d3], dir)
  assert.equal(third.exitCode, 0, third.stderr + err3)
  assert.match(third.stderr, /^make: HIT peer/m)
  assert.match(third.stderr, /^use: HIT peer/m)
  const status3 = JSON.parse((await strataOn(h3, ['status', '--json', '--data-dir', d3], dir)).stdout) as { counters: { bytesFromPeers: number } }
  const blob = statSync(join(d1, 'layers', status1.layers.map((l) => l.root).find((r) => existsSync(join(d1, 'layers', r, 'opt', tag, 'blob')))!, 'opt', tag, 'blob')).size
  assert.ok(blob > 2_000_000)
  // The blob's blocks were local: what crossed is the small files and the manifests.
  assert.ok(status3.counters.bytesFromPeers < 100_000, `host 3 fetched ${status3.counters.bytesFromPeers} bytes`)
})
