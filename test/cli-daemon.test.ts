// `strata daemon` replaces itself with the node flags and allocator setting it runs
// with (packages/cli/bin/strata.js): checked on the running process, as the kernel sees it.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { startDaemonProcess, strata, workDir } from './helpers.ts'

async function daemonProcess (t: { after: (fn: () => Promise<void> | void) => void }, env: NodeJS.ProcessEnv): Promise<{ argv: string[], env: Map<string, string>, hugePages: string | undefined }> {
  const dir = workDir(t, 'daemon-exec')
  const dataDir = join(dir, 'data')
  const child = await startDaemonProcess(t, dataDir, env)
  const argv = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')
  const vars = new Map<string, string>()
  for (const kv of readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0')) {
    const at = kv.indexOf('=')
    if (at > 0) vars.set(kv.slice(0, at), kv.slice(at + 1))
  }
  // 1 where the kernel may back the process's memory with huge pages, 0 where it may not.
  const hugePages = /^THP_enabled:\s+(\d)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1]
  return { argv, env: vars, hugePages }
}

test('strata daemon runs with a 16 MB semi-space, gc exposed, two malloc arenas and huge pages on request, in the same process', async (t) => {
  const { argv, env, hugePages } = await daemonProcess(t, { MALLOC_ARENA_MAX: undefined, GLIBC_TUNABLES: undefined, STRATA_HUGE_PAGES: undefined })
  assert.ok(argv.includes('--max-semi-space-size=16'), argv.join(' '))
  assert.ok(!argv.includes('--max-semi-space-size=4'), argv.join(' '))
  // The block exchange's scavenges need it (packages/daemon/src/scavenge.ts).
  assert.equal(argv.filter((a) => a === '--expose-gc').length, 1, argv.join(' '))
  assert.equal(argv.filter((a) => a === 'daemon').length, 1)
  assert.equal(env.get('MALLOC_ARENA_MAX'), '2')
  assert.equal(env.get('GLIBC_TUNABLES'), 'glibc.malloc.hugetlb=1')
  // At rest the huge-page gate keeps them off (packages/daemon/src/huge-pages.ts).
  assert.equal(hugePages, '0')
})

test('strata daemon keeps a MALLOC_ARENA_MAX and GLIBC_TUNABLES set by the user, and huge pages at all times with STRATA_HUGE_PAGES=always', async (t) => {
  const { env, hugePages } = await daemonProcess(t, { MALLOC_ARENA_MAX: '5', GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0', STRATA_HUGE_PAGES: 'always' })
  assert.equal(hugePages, '1')
  assert.equal(env.get('MALLOC_ARENA_MAX'), '5')
  assert.equal(env.get('GLIBC_TUNABLES'), 'glibc.malloc.tcache_count=0')
})

test('strata daemon refuses a STRATA_HUGE_PAGES it does not know, in one line, before it opens anything', (t) => {
  const dataDir = join(workDir(t, 'daemon-huge-pages'), 'data')
  const r = strata(['daemon', '--data-dir', dataDir], undefined, { STRATA_HUGE_PAGES: 'sometimes' })
  assert.equal(r.status, 1)
  assert.equal(r.stderr, 'strata daemon: STRATA_HUGE_PAGES must be "burst" or "always", got "sometimes" (ERR_DAEMON_CONFIG)\n')
  assert.equal(existsSync(dataDir), false)
})

test('strata layers, ls, pack and unpack answer while a daemon holds the store', async (t) => {
  const dir = workDir(t, 'daemon-readers')
  const dataDir = join(dir, 'data')
  mkdirSync(join(dir, 'src'))
  writeFileSync(join(dir, 'src', 'hello'), 'hello\n')
  const packed = strata(['pack', join(dir, 'src'), '--data-dir', dataDir])
  assert.equal(packed.status, 0, packed.stderr)
  const root = packed.stdout.trim()
  await startDaemonProcess(t, dataDir)
  // Before, each of these printed "waiting for another strata process" and never finished.
  const layers = strata(['layers', '--data-dir', dataDir, '--json'])
  assert.equal(layers.status, 0, layers.stderr)
  assert.deepEqual(layers.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { root: string }).root), [root])
  assert.doesNotMatch(layers.stderr, /waiting/)
  const ls = strata(['ls', root, '--data-dir', dataDir])
  assert.equal(ls.status, 0, ls.stderr)
  assert.match(ls.stdout, /^-rw-r--r-- +0 +0 +6 hello$/m)
  const lsJson = strata(['ls', root, '--data-dir', dataDir, '--json'])
  assert.equal((JSON.parse(lsJson.stdout.trim()) as { path: string, size: number }).size, 6)
  const missing = strata(['ls', 'bafyreiglmc4hm2ogieenyqz7it45tmn5ugb3vkrh22c3s2vxlpqomeuh4q', '--data-dir', dataDir])
  assert.equal(missing.status, 2)
  assert.match(missing.stderr, /no layer bafyrei\w+ in the store/)
  mkdirSync(join(dir, 'src2'))
  writeFileSync(join(dir, 'src2', 'more'), 'more\n')
  const packed2 = strata(['pack', join(dir, 'src2'), '--data-dir', dataDir])
  assert.equal(packed2.status, 0, packed2.stderr)
  assert.equal(strata(['layers', '--data-dir', dataDir]).stdout.trim().split('\n').length, 2)
  const unpacked = strata(['unpack', root, join(dir, 'out'), '--data-dir', dataDir])
  assert.equal(unpacked.status, 0, unpacked.stderr)
  assert.equal(readFileSync(join(dir, 'out', 'hello'), 'utf8'), 'hello\n')
})

test('a command waiting for the store says on whom and how long, and gives up after --wait-timeout with one line', async (t) => {
  const dir = workDir(t, 'daemon-wait')
  const dataDir = join(dir, 'data')
  assert.equal(strata(['layers', '--data-dir', dataDir]).status, 0)
  // Another process holds the store's lock and no daemon answers.
  const holder = spawn('flock', [join(dataDir, 'lock'), '-c', 'echo locked; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'] })
  t.after(async () => {
    if (holder.exitCode === null && holder.signalCode === null) {
      holder.kill('SIGKILL')
      await once(holder, 'exit')
    }
  })
  await once(holder.stdout, 'data')
  const r = strata(['layers', '--data-dir', dataDir, '--wait-timeout', '500ms'])
  assert.equal(r.status, 1)
  assert.match(r.stderr, new RegExp(`^strata: waiting up to 0.5s \\(--wait-timeout\\) for another strata process \\(pid ${holder.pid!}: flock .*\\) to finish with ${dataDir}$`, 'm'))
  assert.match(r.stderr.trim().split('\n').at(-1)!, new RegExp(`^strata layers: another strata process \\(pid ${holder.pid!}.*\\) still holds ${dataDir} after 0.5s \\(--wait-timeout\\) \\(ERR_STORE_BUSY\\)$`))
  assert.equal(strata(['layers', '--data-dir', dataDir, '--wait-timeout', 'soon']).status, 2)
})
