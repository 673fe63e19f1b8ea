import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'
import { createCluster, listNamespaces } from '../scripts/netns.ts'
import type { Cluster } from '../scripts/netns.ts'

const netnsUrl = new URL('../scripts/netns.ts', import.meta.url).href

function assertGone (prefix: string): void {
  assert.deepEqual(listNamespaces().filter((n) => n.startsWith(prefix + '-')), [], 'no namespace left')
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout
  assert.ok(!links.includes(prefix), 'no link in the root namespace')
}

/** False for a zombie too: an orphan killed here waits for whoever reaps it. */
function pidAlive (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return false
  }
}

/** Starts a child Node running `body` (ESM, `createCluster` in scope); resolves with its first stdout line. */
async function child (body: string): Promise<{ proc: ReturnType<typeof spawn>, line: string }> {
  const source = `import { createCluster } from ${JSON.stringify(netnsUrl)}\n${body}`
  const proc = spawn(process.execPath, ['--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] })
  const [line] = await once(createInterface({ input: proc.stdout! }), 'line') as [string]
  return { proc, line }
}

test('hosts reach each other: ping, and a TCP server in one answers a client in another', async (t) => {
  const cluster: Cluster = await createCluster({ hosts: 2 })
  t.after(() => cluster.destroy())
  const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]]
  assert.notEqual(h1.address, h2.address)

  await h1.exec('ping', ['-c', '1', '-W', '2', h2.address])
  await h2.exec('ping', ['-c', '1', '-W', '2', h1.address])

  const server = h1.spawn(process.execPath, ['-e', `
    const srv = require('node:net').createServer((s) => s.end('hello from ' + ${JSON.stringify(h1.name)}))
    srv.listen(7000, ${JSON.stringify(h1.address)}, () => console.log('listening'))`])
  const [ready] = await once(createInterface({ input: server.stdout! }), 'line') as [string]
  assert.equal(ready, 'listening')
  const { stdout } = await h2.exec(process.execPath, ['-e', `
    const s = require('node:net').connect(7000, ${JSON.stringify(h1.address)})
    s.setEncoding('utf8').on('data', (d) => process.stdout.write(d))`])
  assert.equal(stdout, 'hello from h1')
})

test('every host knows every other\'s link address from the start, outside the kernel\'s shared ARP bound', async (t) => {
  // The ARP cache is one table of 1,024 entries for all namespaces: a fleet of 33 in a
  // full mesh filled it and the next host to join could resolve nobody.
  const cluster: Cluster = await createCluster({ hosts: 4 })
  t.after(() => cluster.destroy())
  for (const h of cluster.hosts) {
    const { stdout } = await h.exec('ip', ['-j', 'neigh', 'show', 'dev', 'eth0'])
    const entries = JSON.parse(stdout) as Array<{ dst: string, lladdr: string, state: string[] }>
    const others = cluster.hosts.filter((o) => o !== h).map((o) => o.address).sort()
    assert.deepEqual(entries.filter((e) => e.state.includes('PERMANENT')).map((e) => e.dst).sort(), others, `${h.name}'s neighbours`)
    assert.equal(new Set(entries.map((e) => e.lladdr)).size, entries.length, 'one link address a host')
  }
  await cluster.hosts[3]!.exec('ping', ['-c', '1', '-W', '2', cluster.hosts[0]!.address])
})

test('a host reaches nothing outside the cluster', async (t) => {
  // A server on the root namespace's loopback: a host's 127.0.0.2 is its own.
  const outside = createServer((s) => s.end('leak'))
  outside.listen(0, '127.0.0.2')
  await once(outside, 'listening')
  t.after(() => outside.close())
  const { port } = outside.address() as { port: number }

  const cluster = await createCluster({ hosts: 1 })
  t.after(() => cluster.destroy())
  const [h1] = cluster.hosts as [Cluster['hosts'][0]]

  const routes = (await h1.exec('ip', ['-4', 'route', 'show'])).stdout.trim().split('\n')
  assert.deepEqual(routes.map((r) => r.split(' ')[0]), ['10.231.0.0/24'], 'one route, no default')

  const probe = `
    const s = require('node:net').connect(+process.argv[2], process.argv[1])
    s.on('connect', () => { console.log('connected'); s.destroy() })
    s.on('error', (e) => console.log(e.code))`
  const loop = await h1.exec(process.execPath, ['-e', probe, '127.0.0.2', String(port)])
  assert.equal(loop.stdout.trim(), 'ECONNREFUSED', 'the root namespace loopback is not reachable')
  const far = await h1.exec(process.execPath, ['-e', probe, '192.0.2.1', '80'])
  assert.equal(far.stdout.trim(), 'ENETUNREACH')
})

test('destroy kills spawned processes and removes every namespace; twice is fine', async () => {
  const cluster = await createCluster({ hosts: 3 })
  assert.equal(listNamespaces().filter((n) => n.startsWith(cluster.prefix + '-')).length, 4)
  // A shell whose child ignores SIGTERM: the group and the SIGKILL fallback reach it.
  const shell = cluster.hosts[2]!.spawn('sh', ['-c', 'trap "" TERM; sleep 60 & echo $!; wait'])
  const [grandchild] = await once(createInterface({ input: shell.stdout! }), 'line') as [string]
  const started = Date.now()
  await cluster.destroy({ graceMs: 300 })
  assert.ok(Date.now() - started < 3000)
  assert.equal(pidAlive(shell.pid!), false)
  assert.equal(pidAlive(Number(grandchild)), false)
  assertGone(cluster.prefix)
  await cluster.destroy()
})

test('a failing test body still cleans up', async () => {
  const run = await child(`
    import { test } from 'node:test'
    test('fails', async (t) => {
      const cluster = await createCluster({ hosts: 2 })
      t.after(() => cluster.destroy())
      console.log(cluster.prefix)
      throw new Error('boom')
    })`)
  const [code] = await once(run.proc, 'close') as [number]
  assert.equal(code, 1)
  assertGone(run.line.trim())
})

test('an uncaught error or SIGTERM tears the cluster down with no destroy() call', async () => {
  const crash = await child(`
    const cluster = await createCluster({ hosts: 1 })
    const sleeper = cluster.hosts[0].spawn('sleep', ['60'])
    console.log(cluster.prefix + ' ' + sleeper.pid)
    setTimeout(() => { throw new Error('boom') }, 50)`)
  const [prefix, sleeper] = crash.line.split(' ') as [string, string]
  const [code] = await once(crash.proc, 'close') as [number]
  assert.equal(code, 1)
  assertGone(prefix)
  assert.equal(pidAlive(Number(sleeper)), false)

  const term = await child(`
    const cluster = await createCluster({ hosts: 2 })
    cluster.hosts[1].spawn('sleep', ['60'])
    console.log(cluster.prefix)
    setInterval(() => {}, 1000)`)
  term.proc.kill('SIGTERM')
  const [, signal] = await once(term.proc, 'close') as [number | null, string | null]
  assert.equal(signal, null, 'exits by itself after cleaning up')
  assertGone(term.line.trim())
})

test('cleanup removes the leftovers of a killed run and spares a live cluster', async (t) => {
  const ours = await createCluster({ hosts: 1 })
  t.after(() => ours.destroy())
  const killed = await child(`
    const cluster = await createCluster({ hosts: 2 })
    const sleeper = cluster.hosts[0].spawn('sleep', ['60'])
    console.log(cluster.prefix + ' ' + sleeper.pid)
    setInterval(() => {}, 1000)`)
  const [prefix, sleeper] = killed.line.split(' ') as [string, string]
  killed.proc.kill('SIGKILL')
  await once(killed.proc, 'close')
  assert.equal(listNamespaces().filter((n) => n.startsWith(prefix + '-')).length, 3, 'SIGKILL leaves it behind')

  const cli = spawnSync(process.execPath, [new URL(netnsUrl).pathname, 'cleanup'], { encoding: 'utf8' })
  assert.equal(cli.status, 0, cli.stderr)
  assert.match(cli.stdout, new RegExp(`removed .*${prefix}`))
  assert.doesNotMatch(cli.stdout, new RegExp(ours.prefix))
  assertGone(prefix)
  assert.equal(pidAlive(Number(sleeper)), false)
  assert.equal(listNamespaces().filter((n) => n.startsWith(ours.prefix + '-')).length, 2)
})

/** `from` sends `bytes` to `to` over TCP; resolves with how long `to` took to read them all, and how many it read. */
async function transfer (from: Cluster['hosts'][0], to: Cluster['hosts'][0], port: number, bytes: number): Promise<{ got: number, seconds: number }> {
  const server = from.spawn(process.execPath, ['-e', `
    const srv = require('node:net').createServer((s) => s.end(Buffer.alloc(${bytes}, 7)))
    srv.listen(${port}, ${JSON.stringify(from.address)}, () => console.log('listening'))`])
  const [ready] = await once(createInterface({ input: server.stdout! }), 'line') as [string]
  assert.equal(ready, 'listening')
  const { stdout } = await to.exec(process.execPath, ['-e', `
    const t0 = performance.now(); let n = 0
    const s = require('node:net').connect(${port}, ${JSON.stringify(from.address)})
    s.on('data', (d) => { n += d.length }).on('end', () => console.log(n, (performance.now() - t0) / 1000))`])
  const [got, seconds] = stdout.trim().split(' ').map(Number) as [number, number]
  return { got, seconds }
}

test('a shaped link carries no more than its rate, both ways; a host counts its CPU and link bytes', async (t) => {
  const cluster = await createCluster({ hosts: 2, link: { rate: '40mbit' } })
  t.after(() => cluster.destroy())
  const [h1, h2] = cluster.hosts as [Cluster['hosts'][0], Cluster['hosts'][0]]
  const bytes = 2e6
  // The burst (64 KiB) goes at line speed; the rest cannot go faster than the rate.
  const least = (bytes - 64 * 1024) * 8 / 40e6
  const rxBefore = h2.linkBytes().rx
  const cpuBefore = h2.cpuSeconds()
  for (const [from, to, port] of [[h1, h2, 7001], [h2, h1, 7002]] as const) {
    const { got, seconds } = await transfer(from, to, port, bytes)
    assert.equal(got, bytes)
    assert.ok(seconds >= least, `${bytes} bytes from ${from.name} to ${to.name} took ${seconds} s over a 40mbit link, at least ${least} s expected`)
  }
  assert.ok(h2.linkBytes().rx - rxBefore >= bytes, 'the link counted the bytes')
  assert.ok(h2.cpuSeconds() > cpuBefore, 'the processes started on h2 are counted in its cgroup')
})
