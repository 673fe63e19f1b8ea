// `strata daemon --config FILE`: YAML whose keys are the flags; flags win.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { bin, strata, workDir } from './helpers.ts'

test('a config file sets the daemon\'s options, paths in it are taken from its directory, and flags override it', { timeout: 60_000 }, async (t) => {
  const dir = workDir(t, 'daemon-config')
  mkdirSync(join(dir, 'etc'))
  const config = join(dir, 'etc', 'daemon.yml')
  writeFileSync(config, [
    '# the daemon of a test',
    'data-dir: ../data',
    'listen: /ip4/127.0.0.1/tcp/0',
    'replicas: 0',
    'epoch: 7',
    'read-scope: [from-file, main]',
    'bootstrap-interval: 0',
    'mdns: false',
    ''
  ].join('\n'))
  const child = spawn(process.execPath, [bin, 'daemon', '--config', config, '--epoch', '9'], { stdio: ['ignore', 'ignore', 'pipe'], cwd: '/' })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  })
  const dataDir = join(dir, 'data')
  let r = strata(['status', '--json', '--data-dir', dataDir])
  const deadline = Date.now() + 30_000
  while (r.status !== 0) {
    if (child.exitCode !== null) assert.fail(`daemon exited with ${child.exitCode}: ${stderr}`)
    if (Date.now() > deadline) assert.fail(`daemon not ready after 30 s: ${stderr}`)
    await delay(200)
    r = strata(['status', '--json', '--data-dir', dataDir])
  }
  const s = JSON.parse(r.stdout) as { epoch: number, readScopes: string[], addresses: string[], process: { malloc?: { heap: number, inUse: number, free: number }, trims?: { runs: number }, hugePages?: { bursts: number, msOn: number } } }
  assert.equal(s.epoch, 9)
  assert.deepEqual(s.readScopes, ['from-file', 'main'])
  assert.match(s.addresses[0]!, /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\//)
  // The daemon reports glibc malloc's figures, and its trimmer runs (this machine has glibc).
  assert.ok(s.process.malloc !== undefined && s.process.malloc.inUse > 0 && s.process.malloc.inUse <= s.process.malloc.heap + 2 ** 30, JSON.stringify(s.process))
  assert.equal(typeof s.process.trims?.runs, 'number')
  // A commit is a burst: huge pages on for it, off again after (packages/daemon/src/huge-pages.ts).
  assert.deepEqual(s.process.hugePages, { bursts: 0, msOn: 0 })
  mkdirSync(join(dir, 'upper'))
  writeFileSync(join(dir, 'upper', 'f'), 'a layer\n')
  const packed = strata(['pack', join(dir, 'upper'), '--data-dir', dataDir])
  assert.equal(packed.status, 0, packed.stderr)
  const after = JSON.parse(strata(['status', '--json', '--data-dir', dataDir]).stdout) as { process: { hugePages?: { bursts: number, msOn: number } } }
  assert.equal(after.process.hugePages?.bursts, 1)
  assert.ok(after.process.hugePages.msOn > 0)
  const human = strata(['status', '--data-dir', dataDir])
  assert.equal(human.status, 0, human.stderr)
  assert.match(human.stdout, /^process: rss [^,]+, heap [^,]+ of [^,]+, malloc [\d.]+ (?:[kMGT]B|B) in use and [\d.]+ (?:[kMGT]B|B) free, \d+ fds/m)
})

test('a config file with an unknown key, a value of the wrong type or bad YAML is refused with FILE:LINE:COL', (t) => {
  const dir = workDir(t, 'daemon-config-bad')
  const cases: Array<[string, RegExp]> = [
    ['replicas: 0\nbootstrp: /ip4/10.0.0.1/tcp/7401\n', /:2:1: unknown key "bootstrp" \(keys are the flags: .*bootstrap, bootstrap-interval/],
    ['replicas: 0\nmdns: yes\n', /:2:7: mdns must be true or false/],
    ['listen:\n  - /ip4/127.0.0.1/tcp/0\n  - { port: 1 }\n', /:3:5: listen must be a string or a list of strings/],
    ['epoch: [1, 2]\n', /:1:8: epoch must be a string/],
    ['config: other.yml\n', /:1:1: unknown key "config"/],
    ['listen: [/ip4/127.0.0.1/tcp/0\n', /daemon\.yml:\d+:\d+: /],
    ['replicas: 0\nreplicas: 1\n', /:2:1: Map keys must be unique/],
    ['- replicas: 0\n', /:1:1: must be a mapping of flag names to values/]
  ]
  for (const [text, error] of cases) {
    const file = join(dir, 'daemon.yml')
    writeFileSync(file, text)
    const r = strata(['daemon', '--config', file, '--data-dir', join(dir, 'data')])
    assert.equal(r.status, 1, `${text}: ${r.stderr}`)
    assert.ok(r.stderr.startsWith(`strata daemon: ${file}:`), r.stderr)
    assert.match(r.stderr, error)
    assert.match(r.stderr, /\(ERR_CONFIG_FILE\)\n$/)
  }
  const missing = strata(['daemon', '--config', join(dir, 'nope.yml'), '--data-dir', join(dir, 'data')])
  assert.equal(missing.status, 1)
  assert.match(missing.stderr, /nope\.yml: cannot read: ENOENT/)
  const big = join(dir, 'big.yml')
  writeFileSync(big, '#'.repeat(1024 * 1024) + '\n')
  const tooLarge = strata(['daemon', '--config', big, '--data-dir', join(dir, 'data')])
  assert.equal(tooLarge.status, 1)
  assert.match(tooLarge.stderr, /big\.yml: cannot read: larger than 1048576 bytes \(ERR_CONFIG_FILE\)/)
})
