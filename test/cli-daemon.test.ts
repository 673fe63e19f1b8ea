// `strata daemon` replaces itself with the node flags and allocator setting it runs
// with (packages/cli/bin/strata.js): checked on the running process, as the kernel sees it.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { bin, strata, workDir } from './helpers.ts'

async function daemonProcess (t: { after: (fn: () => Promise<void> | void) => void }, env: NodeJS.ProcessEnv): Promise<{ argv: string[], env: Map<string, string> }> {
  const dir = workDir(t, 'daemon-exec')
  const dataDir = join(dir, 'data')
  const child = spawn(process.execPath, [bin, 'daemon', '--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--replicas', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  })
  const deadline = Date.now() + 30_000
  while (strata(['status', '--json', '--data-dir', dataDir]).status !== 0) {
    if (child.exitCode !== null) assert.fail(`daemon exited with ${child.exitCode}: ${stderr}`)
    if (Date.now() > deadline) assert.fail(`daemon not ready after 30 s: ${stderr}`)
    await delay(200)
  }
  const argv = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')
  const vars = new Map<string, string>()
  for (const kv of readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0')) {
    const at = kv.indexOf('=')
    if (at > 0) vars.set(kv.slice(0, at), kv.slice(at + 1))
  }
  return { argv, env: vars }
}

test('strata daemon runs with a 16 MB semi-space, gc exposed, two malloc arenas and huge pages on request, in the same process', async (t) => {
  const { argv, env } = await daemonProcess(t, { MALLOC_ARENA_MAX: undefined, GLIBC_TUNABLES: undefined })
  assert.ok(argv.includes('--max-semi-space-size=16'), argv.join(' '))
  assert.ok(!argv.includes('--max-semi-space-size=4'), argv.join(' '))
  // The block exchange's scavenges need it (packages/daemon/src/scavenge.ts).
  assert.equal(argv.filter((a) => a === '--expose-gc').length, 1, argv.join(' '))
  assert.equal(argv.filter((a) => a === 'daemon').length, 1)
  assert.equal(env.get('MALLOC_ARENA_MAX'), '2')
  assert.equal(env.get('GLIBC_TUNABLES'), 'glibc.malloc.hugetlb=1')
})

test('strata daemon keeps a MALLOC_ARENA_MAX and GLIBC_TUNABLES set by the user', async (t) => {
  const { env } = await daemonProcess(t, { MALLOC_ARENA_MAX: '5', GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' })
  assert.equal(env.get('MALLOC_ARENA_MAX'), '5')
  assert.equal(env.get('GLIBC_TUNABLES'), 'glibc.malloc.tcache_count=0')
})
