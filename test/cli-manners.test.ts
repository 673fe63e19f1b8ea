// How strata talks to a person: help and version, exit codes, warnings in words,
// counts that agree, and one line for an error.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { buildTree, tempDir } from '@strata/testing'
import { bin, strata, workDir } from './helpers.ts'
import type { CliResult } from './helpers.ts'

/** A well-formed CID that no store here holds. */
const UNKNOWN = 'bafyreier536how7r2s67sqgt3iildwg5jl2q3x25qiefabcpnbokejspze'

const jsonLine = /^\{"level":/m

function commandNames (): string[] {
  const help = strata(['help'])
  assert.equal(help.status, 0, help.stderr)
  return [...help.stdout.matchAll(/^ {2}strata (\S+)/gm)].map((m) => m[1]!)
}

/** A failure: exit 1, one line on stderr naming the command, and no usage. */
function assertFailure (r: CliResult, name: string, message: RegExp): void {
  assert.equal(r.status, 1, `strata ${name}: ${r.stderr}`)
  assert.match(r.stderr, new RegExp(`^strata ${name}: [^\\n]*\\n$`))
  assert.match(r.stderr, message)
}

/** A usage error: exit 2, the reason and the usage line. */
function assertUsage (r: CliResult, name: string, message: RegExp): void {
  assert.equal(r.status, 2, `strata ${name}: ${r.stderr}`)
  assert.match(r.stderr, new RegExp(`^strata ${name}: .*\\nusage: strata ${name} `))
  assert.match(r.stderr, message)
}

test('every command takes --help, -h and help COMMAND: its usage and each of its flags, exit 0', () => {
  const names = commandNames()
  assert.ok(names.length >= 12)
  const helps = new Map<string, string>()
  for (const name of names) {
    const help = strata([name, '--help'])
    assert.equal(help.status, 0, `strata ${name} --help: ${help.stderr}`)
    assert.equal(help.stderr, '')
    assert.match(help.stdout, new RegExp(`^usage: strata ${name}`))
    const usage = help.stdout.split('\n', 1)[0]!
    const options = help.stdout.slice(help.stdout.indexOf('\noptions:\n'))
    for (const flag of usage.match(/(?<=[\s[])--?[a-z][a-z-]*/g) ?? []) {
      assert.match(options, new RegExp(`^ {2}(-\\w, )?${flag}\\b`, 'm'), `strata ${name} --help lists ${flag}`)
    }
    assert.match(options, /^ {2}-h, --help /m)
    helps.set(name, help.stdout)
  }
  for (const name of ['run', 'ls']) {
    assert.equal(strata([name, '-h']).stdout, helps.get(name), `strata ${name} -h`)
    const viaHelp = strata(['help', name])
    assert.equal(viaHelp.status, 0)
    assert.equal(viaHelp.stdout, helps.get(name), `strata help ${name}`)
  }
  // The flags mean something: a described one, and an option described per command.
  assert.match(strata(['gc', '--help']).stdout, /^ {2}--dry-run +say what would be removed/m)
  // --help after the step's `--` belongs to the step's command, and exec wants its --name.
  assertUsage(strata(['exec', '--', 'ls', '--help']), 'exec', /--name is required/)
  const unknown = strata(['help', 'frobnicate'])
  assert.equal(unknown.status, 2)
  assert.match(unknown.stderr, /unknown command "frobnicate"/)
})

test('strata --version, -V and version print the version of the package, exit 0', () => {
  const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'packages', 'cli', 'package.json'), 'utf8')) as { version: string }
  for (const arg of ['--version', '-V', 'version']) {
    const r = strata([arg])
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stdout, `strata ${pkg.version}\n`)
  }
})

test('exit 2 for a CID, key or value that does not parse; exit 1 and one line for a well-formed one that is not there', (t) => {
  const dir = workDir(t, 'cli-manners')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: one\n    run: "true"\n')

  assertUsage(strata(['ls', 'not-a-cid', '--data-dir', data]), 'ls', /not a layer CID: "not-a-cid"/)
  assertFailure(strata(['ls', UNKNOWN, '--data-dir', data]), 'ls', /no layer bafy\S+ in the store \(ERR_LAYER_NOT_FOUND\)/)
  assertUsage(strata(['unpack', 'not-a-cid', join(dir, 'out'), '--data-dir', data]), 'unpack', /not a layer CID/)
  assertFailure(strata(['unpack', UNKNOWN, join(dir, 'out'), '--data-dir', data]), 'unpack', /not in the store|no layer/)

  assertUsage(strata(['exec', '--name', 'x', '--parent', 'garbage', '--data-dir', data, '--', 'true'], dir), 'exec', /--parent: "garbage" is not a key/)
  assertFailure(strata(['exec', '--name', 'x', '--parent', UNKNOWN, '--data-dir', data, '--', 'true'], dir), 'exec', /ERR_PARENT_NOT_FOUND/)
  assertUsage(strata(['exec', '--name', 'x', '--timeout', 'soon', '--data-dir', data, '--', 'true'], dir), 'exec', /--timeout: "soon" is not a duration/)
  assertUsage(strata(['exec', '--name', 'not a name', '--data-dir', data, '--', 'true'], dir), 'exec', /step name "not a name"/)

  assertUsage(strata(['why', '--data-dir', data], dir), 'why', /expected 1 argument, got 0/)
  assertFailure(strata(['why', 'two', '--data-dir', data], dir), 'why', /no step named "two" .*\(ERR_STEP_NOT_FOUND\)/)

  assertUsage(strata(['daemon', '--allow-peer', 'garbage', '--data-dir', data]), 'daemon', /--allow-peer: "garbage" is not a peer id/)
  assertUsage(strata(['daemon', '--listen', '0.0.0.0:7401', '--data-dir', data]), 'daemon', /--listen: "0\.0\.0\.0:7401" is not a multiaddr/)
  assertUsage(strata(['daemon', '--bootstrap', '/ip4/999.0.0.1/tcp/7401', '--data-dir', data]), 'daemon', /--bootstrap: "\/ip4\/999\.0\.0\.1\/tcp\/7401" is not a multiaddr/)
  assertUsage(strata(['layers', '--bogus', '--data-dir', data]), 'layers', /^strata layers: unknown option '--bogus'\n/)
  assertUsage(strata(['layers', 'extra', '--data-dir', data]), 'layers', /unexpected argument "extra"/)
})

test('gc --dry-run in words: warnings as one line, no JSON line unless STRATA_LOG_LEVEL asks; 1 and 2 layers', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'a'), { 'f.txt': 'a'.repeat(2000) })
  buildTree(join(dir, 'b'), { 'f.txt': 'b'.repeat(2000), 'g.txt': 'b' })
  const a = strata(['pack', join(dir, 'a'), '--data-dir', data])
  assert.equal(a.status, 0, a.stderr)
  assert.match(a.stderr, /^packed 1 entry, /m)

  // The layer is recent: kept, and the store stays over a budget of 0, which the store warns about.
  const kept = strata(['gc', '--max-size', '0', '--dry-run', '--data-dir', data])
  assert.equal(kept.status, 0, kept.stderr)
  assert.doesNotMatch(kept.stdout + kept.stderr, jsonLine)
  assert.match(kept.stderr, /^strata: warning: the store stays over its size budget[^\n]*\(size=2000, maxSize=0, kept=1\)$/m)
  assert.match(kept.stderr, /, 0 layers would be removed$/m)

  const one = strata(['gc', '--max-size', '0', '--hard-limit', '1', '--dry-run', '--data-dir', data])
  assert.equal(one.status, 0, one.stderr)
  assert.doesNotMatch(one.stdout + one.stderr, jsonLine)
  assert.match(one.stderr, /, 1 layer would be removed$/m)

  const b = strata(['pack', join(dir, 'b'), '--data-dir', data])
  assert.match(b.stderr, /^packed 2 entries, /m)
  const two = strata(['gc', '--max-size', '0', '--hard-limit', '1', '--dry-run', '--data-dir', data])
  assert.match(two.stderr, /, 2 layers would be removed$/m)
  assert.doesNotMatch(two.stdout + two.stderr, jsonLine)

  // Asked for, the log is JSON lines on stderr (and no words twice); with --json, JSON too.
  const logged = strata(['gc', '--max-size', '0', '--dry-run', '--data-dir', data], undefined, { STRATA_LOG_LEVEL: 'warn' })
  assert.match(logged.stderr, /^\{"level":40,.*"msg":"the store stays over its size budget/m)
  assert.doesNotMatch(logged.stderr, /strata: warning:/)
  const json = strata(['gc', '--max-size', '0', '--dry-run', '--json', '--data-dir', data])
  assert.match(json.stderr, /^\{"level":40,/m)
  // To a file: JSON lines there, the words on stderr.
  const file = join(dir, 'log', 'strata.log')
  const toFile = strata(['gc', '--max-size', '0', '--dry-run', '--data-dir', data], undefined, { STRATA_LOG_FILE: file })
  assert.doesNotMatch(toFile.stderr, jsonLine)
  assert.match(toFile.stderr, /^strata: warning: the store stays over/m)
  assert.match(readFileSync(file, 'utf8'), /^\{"level":40,/m)
})

test('strata run in words: a store warning is one line, no JSON line; 1 step, then 2 steps', (t) => {
  const dir = workDir(t, 'cli-manners')
  const data = join(dir, 'data')
  assert.equal(strata(['layers', '--data-dir', data]).status, 0)
  // A dir in layers/ that the index does not know: the store removes it on open, with a warning.
  mkdirSync(join(data, 'layers', 'not-a-layer'))
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: one\n    run: "true"\n')
  const first = strata(['run', '--data-dir', data], dir)
  assert.equal(first.status, 0, first.stderr)
  assert.doesNotMatch(first.stdout + first.stderr, jsonLine)
  assert.match(first.stderr, /^strata: warning: removing a layer dir that is not a complete layer \(layer=not-a-layer\)$/m)
  assert.match(first.stderr, /^strata: 1 step, 0 cached, in /m)

  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: one\n    run: "true"\n  - name: two\n    run: "true"\n')
  const second = strata(['run', '--data-dir', data], dir)
  assert.equal(second.status, 0, second.stderr)
  assert.match(second.stderr, /^strata: 2 steps, 1 cached, in /m)
})

test('strata daemon on a port in use says so in one line naming the address, exit 1', async (t) => {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => { server.close() })
  const port = (server.address() as AddressInfo).port
  const dir = workDir(t, 'cli-manners-daemon')
  const addr = `/ip4/127.0.0.1/tcp/${port}`
  // The port stays bound in the kernel while this thread waits; a daemon that did start is killed by the timeout.
  const r = spawnSync(process.execPath, [bin, 'daemon', '--listen', addr, '--data-dir', join(dir, 'data'), '--replicas', '0'], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' })
  assert.equal(r.signal, null, `the daemon started on a port in use: ${r.stderr}`)
  assert.equal(r.status, 1, r.stderr)
  assert.equal(r.stderr, `strata daemon: cannot listen on ${addr}: the address is in use (another process listens on it) (ERR_LISTEN)\n`)
})
