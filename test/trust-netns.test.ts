import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createCluster } from '../scripts/netns.ts'
import type { Cluster, Host } from '../scripts/netns.ts'
import { bin, daemonReady, strataOn } from './helpers.ts'

interface Status { peerId: string, peers: string[], privateNetwork: boolean }

test('a private fleet: members with the key share the cache across scopes; a host without the key, or off the allow-list, gets nothing', async (t) => {
  const cluster: Cluster = await createCluster({ hosts: 4 })
  t.after(() => cluster.destroy())
  const dir = mkdtempSync('/var/tmp/strata-trust-netns-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const [h1, h2, h3, h4] = cluster.hosts as [Host, Host, Host, Host]
  const data = (h: Host): string => join(dir, h.name)
  for (const h of cluster.hosts) mkdirSync(data(h))
  const tag = `strata-trust-${process.pid}-${Date.now()}`
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    `salt: ${tag}`,
    'steps:',
    '  - name: make',
    `    run: mkdir -p /opt/${tag} && seq 1 20000 > /opt/${tag}/blob`,
    ''
  ].join('\n'))

  const key = join(dir, 'swarm.key')
  const gen = await strataOn(h1, ['keygen-psk', key], dir)
  assert.equal(gen.exitCode, 0, gen.stderr)
  assert.equal(statSync(key).mode & 0o777, 0o600)
  const again = await strataOn(h1, ['keygen-psk', key], dir)
  assert.equal(again.exitCode, 1)
  assert.match(again.stderr, /exists: not overwriting/)

  // --require-psk without a key: one clear line, exit 1, nothing left running.
  const refused = await strataOn(h3, ['daemon', '--data-dir', data(h3), '--require-psk', '--listen', `/ip4/${h3.address}/tcp/4001`], dir)
  assert.equal(refused.exitCode, 1)
  assert.match(refused.stderr, /^strata daemon: a pre-shared key is required \(--require-psk\) but none was given \(--psk-file FILE\) \(ERR_DAEMON_CONFIG\)\n$/)

  const stdio = { stdio: ['ignore', 'ignore', 'pipe'] as ['ignore', 'ignore', 'pipe'] }
  const daemon = (h: Host, extra: string[]): void => {
    const p = h.spawn(process.execPath, [bin, 'daemon', '--data-dir', data(h), '--listen', `/ip4/${h.address}/tcp/4001`, '--replicas', '0', ...extra], stdio)
    p.stderr?.resume()
  }
  // h1 lets only h2 in; h4 has the key but is not on the list.
  const idOf = async (h: Host): Promise<string> => (await strataOn(h, ['id', '--data-dir', data(h)], dir)).stdout.trim()
  const allowed = join(dir, 'allowed-peers')
  writeFileSync(allowed, `# the fleet\n${await idOf(h2)}  # h2\n`)
  daemon(h1, ['--psk-file', key, '--require-psk', '--allow-peers-file', allowed])
  const s1 = await daemonReady<Status>(h1, data(h1), dir)
  assert.equal(s1.privateNetwork, true)
  const boot = ['--bootstrap', `/ip4/${h1.address}/tcp/4001/p2p/${s1.peerId}`]
  daemon(h2, ['--psk-file', key, ...boot])
  await daemonReady(h2, data(h2), dir, s1.peerId)
  daemon(h3, boot)
  await daemonReady(h3, data(h3), dir)
  daemon(h4, ['--psk-file', key, ...boot])
  await daemonReady(h4, data(h4), dir)

  const first = await strataOn(h1, ['run', '--data-dir', data(h1), '--scope', 'main'], dir)
  assert.equal(first.exitCode, 0, first.stderr)
  assert.match(first.stderr, /^make: MISS/m)

  // A branch that reads only its own scope does not see main's record.
  const own = await strataOn(h2, ['run', '--data-dir', data(h2), '--no-cache', '--json'], dir, { STRATA_SCOPE: 'pr/6' })
  assert.equal(own.exitCode, 0, own.stderr)
  const isolated = await strataOn(h2, ['why', 'make', '--data-dir', data(h2), '--json'], dir, { STRATA_SCOPE: 'pr/7' })
  assert.equal(isolated.exitCode, 0, isolated.stderr)
  assert.equal((JSON.parse(isolated.stdout) as { steps: Array<{ hit: boolean }> }).steps[0]!.hit, false)
  // A branch that falls back to main hits it from the peer.
  const branch = await strataOn(h2, ['run', '--data-dir', data(h2)], dir, { STRATA_SCOPE: 'pr/5', STRATA_READ_SCOPES: 'pr/5,main' })
  assert.equal(branch.exitCode, 0, branch.stderr)
  assert.match(branch.stderr, /^make: HIT peer/m)

  // The host without the key never joins: it runs the step itself.
  const outsider = await strataOn(h3, ['run', '--data-dir', data(h3), '--scope', 'main'], dir)
  assert.equal(outsider.exitCode, 0, outsider.stderr)
  assert.match(outsider.stderr, /^make: MISS/m)
  const s3 = await daemonReady<Status>(h3, data(h3), dir)
  assert.ok(!s3.peers.includes(s1.peerId), 'the outsider is not connected to the fleet')
  // Nor does the host with the key that is not on h1's allow-list.
  const unlisted = await strataOn(h4, ['run', '--data-dir', data(h4), '--scope', 'main'], dir)
  assert.equal(unlisted.exitCode, 0, unlisted.stderr)
  assert.match(unlisted.stderr, /^make: MISS/m)
  const s4 = await daemonReady<Status>(h4, data(h4), dir)
  assert.ok(!s4.peers.includes(s1.peerId), 'the unlisted host is not connected to h1')
  const peers1 = (await daemonReady(h1, data(h1), dir)).peers
  assert.ok(!peers1.includes(s3.peerId) && !peers1.includes(s4.peerId), `h1 is connected to ${peers1.join(', ')}`)
})

test('a fleet that trusts a writer key, not VMs: the main job holding the key publishes; a PR VM without it reads main but cannot write it', async (t) => {
  const cluster: Cluster = await createCluster({ hosts: 3 })
  t.after(() => cluster.destroy())
  const dir = mkdtempSync('/var/tmp/strata-writers-netns-')
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const [mainVm, prVm, readerVm] = cluster.hosts as [Host, Host, Host]
  const data = (h: Host): string => join(dir, h.name)
  for (const h of cluster.hosts) mkdirSync(data(h))
  const tag = `strata-writers-${process.pid}-${Date.now()}`
  const pipeline = (name: string, content: string): string => ['base: host', `salt: ${tag}`, 'steps:', `  - name: ${name}`, `    run: mkdir -p /opt/${tag} && echo ${content} > /opt/${tag}/${name}`, ''].join('\n')
  writeFileSync(join(dir, 'strata.yml'), pipeline('build', 'main'))
  mkdirSync(join(dir, 'pr'))
  writeFileSync(join(dir, 'pr', 'strata.yml'), pipeline('poison', 'pr'))

  // The key is made once, kept in the CI's secret store; only main's job gets the file.
  const made = await strataOn(mainVm, ['keygen-writer', 'ci-main', '--dir', join(dir, 'secrets')], dir)
  assert.equal(made.exitCode, 0, made.stderr)
  const pub = made.stdout.trim()
  const keyFile = join(dir, 'secrets', 'ci-main-1.key')
  const trustFile = join(dir, 'writers')
  writeFileSync(trustFile, `# main's writer key\n${pub}@main\n`)

  const stdio = { stdio: ['ignore', 'ignore', 'pipe'] as ['ignore', 'ignore', 'pipe'] }
  // Every VM runs the same daemon command line: no VM's peer id is known in advance.
  const daemon = (h: Host, extra: string[]): void => {
    const p = h.spawn(process.execPath, [bin, 'daemon', '--data-dir', data(h), '--listen', `/ip4/${h.address}/tcp/4001`, '--replicas', '0', '--trusted-writers-file', trustFile, ...extra], stdio)
    p.stderr?.resume()
  }
  daemon(mainVm, [])
  const s1 = await daemonReady<Status>(mainVm, data(mainVm), dir)
  const boot = ['--bootstrap', `/ip4/${mainVm.address}/tcp/4001/p2p/${s1.peerId}`]
  daemon(prVm, boot)
  await daemonReady(prVm, data(prVm), dir, s1.peerId)
  daemon(readerVm, boot)
  await daemonReady(readerVm, data(readerVm), dir, s1.peerId)

  const onMain = await strataOn(mainVm, ['run', '--data-dir', data(mainVm), '--scope', 'main'], dir, { STRATA_WRITER_KEY_FILE: keyFile })
  assert.equal(onMain.exitCode, 0, onMain.stderr)
  assert.match(onMain.stderr, /^build: MISS/m)

  // The PR VM hits main's layer from the peer.
  const pr = await strataOn(prVm, ['run', '--data-dir', data(prVm)], dir, { STRATA_SCOPE: 'pr/5', STRATA_READ_SCOPES: 'pr/5,main' })
  assert.equal(pr.exitCode, 0, pr.stderr)
  assert.match(pr.stderr, /^build: HIT peer/m)

  // It writes a record claiming main, signed by its own identity: every other VM refuses it.
  const poison = await strataOn(prVm, ['run', '--data-dir', data(prVm), '--scope', 'main'], join(dir, 'pr'))
  assert.equal(poison.exitCode, 0, poison.stderr)
  assert.match(poison.stderr, /^poison: MISS/m)
  // Both other VMs learned it by gossip and refused it as untrusted (before anyone else wrote in main).
  for (const h of [mainVm, readerVm]) {
    const deadline = Date.now() + 20_000
    for (;;) {
      const s = await daemonReady<Status & { recordsRejected: Record<string, number> }>(h, data(h), dir)
      if ((s.recordsRejected['untrusted-signer'] ?? 0) >= 1) break
      if (Date.now() > deadline) assert.fail(`${h.name} did not refuse the PR VM's main record: ${JSON.stringify(s.recordsRejected)}`)
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  }
  // Looked up, it is a miss: the step runs.
  const reader = await strataOn(readerVm, ['run', '--data-dir', data(readerVm), '--scope', 'main'], join(dir, 'pr'))
  assert.equal(reader.exitCode, 0, reader.stderr)
  assert.match(reader.stderr, /^poison: MISS/m)
  // Main's record, signed by the key, is a hit on the third VM too.
  const fromMain = await strataOn(readerVm, ['run', '--data-dir', data(readerVm), '--scope', 'main'], dir)
  assert.equal(fromMain.exitCode, 0, fromMain.stderr)
  assert.match(fromMain.stderr, /^build: HIT peer/m)
})
