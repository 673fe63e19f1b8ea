import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import type { SpawnSyncReturns } from 'node:child_process'
import { existsSync, realpathSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import { bin, strata } from './helpers.ts'
import type { CliResult } from './helpers.ts'

test('strata pack, ls, layers and unpack round-trip a tree', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'src'), {
    'bin': { dir: { 'tool': { file: '#!/bin/sh\n', mode: 0o755 } } },
    'gone': { whiteout: true },
    'notes.txt': 'hello\n'
  })
  const expected = describeTree(join(dir, 'src'))
  const packed = strata(['pack', join(dir, 'src'), '--data-dir', data, '--keep-source'])
  assert.equal(packed.status, 0, packed.stderr)
  const root = packed.stdout.trim().split('\n').at(-1)!
  assert.match(root, /^bafy/)
  assert.ok(existsSync(join(dir, 'src', 'notes.txt')), '--keep-source left the source')

  const listed = strata(['ls', root, '--data-dir', data])
  assert.equal(listed.status, 0, listed.stderr)
  assert.match(listed.stdout, /-rwxr-xr-x .* bin\/tool/)
  assert.match(listed.stdout, /gone \(deleted\)/)

  const layers = strata(['layers', '--data-dir', data, '--json'])
  assert.equal(JSON.parse(layers.stdout.trim()).root, root)

  const out = join(dir, 'out')
  const unpacked = strata(['unpack', root, out], undefined, { STRATA_DATA_DIR: data })
  assert.equal(unpacked.status, 0, unpacked.stderr)
  assert.deepEqual(describeTree(out), expected)

  const json = strata(['pack', join(dir, 'src'), '--data-dir', data, '--json'])
  assert.equal(JSON.parse(json.stdout).root, root, 'the same tree packs to the same layer')
  assert.equal(existsSync(join(dir, 'src')), false, 'without --keep-source the tree moves into the store')
})

test('strata fails with a one-line reason and a non-zero exit', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  const missing = strata(['pack', join(dir, 'nope'), '--data-dir', data])
  assert.equal(missing.status, 1)
  assert.match(missing.stderr, /^strata pack: .*nope.*\n$/)
  const badCid = strata(['unpack', 'not-a-cid', join(dir, 'out'), '--data-dir', data])
  assert.equal(badCid.status, 2)
  assert.match(badCid.stderr, /not a layer CID/)
  const unknown = strata(['unpack', 'bafyreier536how7r2s67sqgt3iildwg5jl2q3x25qiefabcpnbokejspze', join(dir, 'out'), '--data-dir', data])
  assert.equal(unknown.status, 1)
  assert.match(unknown.stderr, /no layer bafy.* in the store \(ERR_LAYER_NOT_FOUND\)/)
  const flag = strata(['pack', '--bogus'])
  assert.equal(flag.status, 2)
  assert.match(flag.stderr, /unknown option '--bogus'/)
  assert.equal(strata(['frobnicate']).status, 2)
})

test('strata help lists every command by its own usage line; an unknown command is refused', () => {
  const help = strata(['help'])
  assert.equal(help.status, 0, help.stderr)
  const names = [...help.stdout.matchAll(/^ {2}strata (\S+)/gm)].map((m) => m[1])
  assert.deepEqual(names, ['run', 'exec', 'why', 'daemon', 'id', 'status', 'gc', 'keygen-psk', 'keygen-writer', 'pack', 'unpack', 'ls', 'layers', 'verify'])
  for (const name of names) {
    const usage = strata([name!, '--no-such-flag'])
    assert.equal(usage.status, 2, `strata ${name} --no-such-flag: ${usage.stderr}`)
    assert.match(usage.stderr, new RegExp(`^strata ${name}: .*\\nusage: strata ${name} `), `strata ${name} names itself in its usage`)
  }
  const unknown = strata(['pak'])
  assert.equal(unknown.status, 2)
  assert.match(unknown.stderr, /unknown command "pak"/)
})

/** `strata ARGS | READER` in bash; the status is strata's own, not the reader's. */
function piped (args: string[], reader: string): SpawnSyncReturns<string> {
  return spawnSync('bash', ['-c', `"$@" | ${reader}; exit \${PIPESTATUS[0]}`, 'bash', process.execPath, bin, ...args], { encoding: 'utf8', timeout: 60_000 })
}

test('strata help into a pipe closed after one line ends quietly', () => {
  const r = piped(['help'], 'head -1')
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout, 'strata: layer caching for CI steps, shared peer-to-peer\n')
  assert.equal(r.stderr, '')
  // A reader gone before anything is written: the one write fails with EPIPE.
  const gone = piped(['help'], 'exec 0<&-')
  assert.equal(gone.stderr, '')
  assert.equal(gone.status, 0)
})

test('strata ls of a large layer into a pipe closed after one line ends quietly, with its own status', (t) => {
  const dir = tempDir(t)
  const files: Record<string, string> = {}
  for (let i = 0; i < 4000; i++) files[`file-with-a-long-enough-name-${String(i).padStart(5, '0')}.txt`] = ''
  buildTree(join(dir, 'src'), files)
  const packed = strata(['pack', join(dir, 'src'), '--data-dir', join(dir, 'data')])
  assert.equal(packed.status, 0, packed.stderr)
  const root = packed.stdout.trim().split('\n').at(-1)!
  // ~300 KB of listing: far more than the pipe holds when head exits.
  const r = piped(['ls', root, '--data-dir', join(dir, 'data')], 'head -1')
  assert.equal(r.stderr, '')
  assert.equal(r.status, 0)
  assert.match(r.stdout, /^\S+ .*\n$/)
})

// The machine's own node, when there is one older than the CLI needs (this image's is 20).
const oldNode = ['/usr/bin/node', '/usr/local/bin/node'].map((p) => ({ p, v: spawnSync(p, ['--version'], { encoding: 'utf8' }).stdout?.trim() }))
  .find(({ v }) => v !== undefined && /^v(\d+)\./.test(v) && Number(/^v(\d+)\./.exec(v)![1]) < 24)

test('run by a Node older than 24, strata says which Node it needs and how to run it', { skip: oldNode === undefined ? 'no node older than 24 on this machine' : false }, () => {
  const r = spawnSync(oldNode!.p, [bin, 'layers'], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 2)
  assert.equal(r.stdout, '')
  // Node reports its own path with symlinks resolved.
  const path = realpathSync(oldNode!.p).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  assert.match(r.stderr, new RegExp(`^strata: needs Node\\.js 24, and ${path} is ${oldNode!.v.replace(/\./g, '\\.')}; run it as \`npx strata\``))
})

test('run through its shebang, as npx runs it, strata gives malloc two arenas and huge pages, and a GLIBC_TUNABLES of the user comes after', () => {
  // The preload prints what the process was started with.
  const preload = 'data:text/javascript,' + encodeURIComponent('process.stderr.write("tunables=" + JSON.stringify(process.env.GLIBC_TUNABLES) + "\\n")')
  const run = (user: string | undefined): CliResult => {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`, NODE_OPTIONS: `--import=${preload}` }
    if (user === undefined) delete env.GLIBC_TUNABLES
    else env.GLIBC_TUNABLES = user
    const r = spawnSync(bin, ['help'], { encoding: 'utf8', timeout: 60_000, env })
    return { status: r.status, stdout: r.stdout, stderr: r.stderr }
  }
  const plain = run(undefined)
  assert.equal(plain.status, 0, plain.stderr)
  assert.match(plain.stdout, /^ {2}strata pack DIR /m)
  assert.match(plain.stderr, /^tunables="glibc\.malloc\.arena_max=2:glibc\.malloc\.hugetlb=1:"$/m)
  const user = run('glibc.malloc.hugetlb=0')
  assert.equal(user.status, 0, user.stderr)
  assert.match(user.stderr, /^tunables="glibc\.malloc\.arena_max=2:glibc\.malloc\.hugetlb=1:glibc\.malloc\.hugetlb=0"$/m)
})

test('pack with a native module that cannot load says so, as any command that cannot load', () => {
  // The bin starts pack's file workers before it loads the command; their module failing is the command's to report.
  const hooks = 'export async function resolve (s, c, next) { if (s === "@strata/sys") throw new Error("no " + s + " here"); return next(s, c) }'
  const preload = `import { register } from 'node:module'; register(${JSON.stringify('data:text/javascript,' + encodeURIComponent(hooks))})`
  const r = spawnSync(process.execPath, ['--import', 'data:text/javascript,' + encodeURIComponent(preload), bin, 'pack', '/nonexistent'], { encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 1)
  assert.equal(r.stderr, 'strata pack: cannot load the command: no @strata/sys here\n')
})

test('a command loads only its own modules, and one that cannot load is named with the reason', (t) => {
  // A resolve hook that fails the step runner's package and the daemon's client, as a broken install would.
  const hooks = 'export async function resolve (s, c, next) { if (s === "@strata/runner" || s === "@strata/daemon/client") throw new Error("no " + s + " here"); return next(s, c) }'
  const preload = `import { register } from 'node:module'; register(${JSON.stringify('data:text/javascript,' + encodeURIComponent(hooks))})`
  const withoutRunner = (args: string[]): CliResult => {
    const r = spawnSync(process.execPath, ['--import', 'data:text/javascript,' + encodeURIComponent(preload), bin, ...args], { encoding: 'utf8', timeout: 60_000 })
    return { status: r.status, stdout: r.stdout, stderr: r.stderr }
  }
  const broken = withoutRunner(['run', '--file', '/nonexistent/strata.yml'])
  assert.equal(broken.status, 1)
  assert.match(broken.stderr, /^strata run: cannot load the command: .*no @strata\/(runner|daemon\/client) here/)
  const help = withoutRunner(['help'])
  assert.equal(help.status, 1, 'help says that some command cannot load')
  assert.match(help.stdout, /^ {2}strata pack DIR /m)
  assert.match(help.stdout, /^ {2}strata run\n {6}\(cannot load the command: .*no @strata\/(runner|daemon\/client) here/m)
  assert.equal(help.stderr, '')
  const dir = tempDir(t)
  buildTree(join(dir, 'src'), { 'a.txt': 'a\n' })
  const packed = withoutRunner(['pack', join(dir, 'src'), '--data-dir', join(dir, 'data')])
  assert.equal(packed.status, 0, `pack does not need the runner: ${packed.stderr}`)
  assert.match(packed.stdout.trim(), /^bafy/)
})
