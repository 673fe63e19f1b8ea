import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata, workDir } from './helpers.ts'

test('strata run prints a status line per step, hits on the second run, and why explains a miss', (t) => {
  const dir = workDir(t, 'cli-run')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'input.txt'), 'one\n')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: make',
    '    filter: []',
    `    run: mkdir -p /opt/strata-cli-test && echo made > /opt/strata-cli-test/out && echo STAGE=made >> "$STRATA_ENV"`,
    '  - name: use',
    '    run: test "$STAGE" = made && cat /opt/strata-cli-test/out input.txt > /opt/strata-cli-test/both',
    '    filter: [input.txt]',
    ''
  ].join('\n'))
  const first = strata(['run', '--data-dir', data], dir)
  assert.equal(first.status, 0, first.stderr)
  assert.match(first.stderr, /^make: MISS → ran in [\d.]+s, captured \d+ B in [\d.]+s$/m)
  assert.match(first.stderr, /^use: MISS → ran in/m)
  const second = strata(['run', '--data-dir', data], dir)
  assert.equal(second.status, 0, second.stderr)
  assert.match(second.stderr, /^make: HIT local/m)
  assert.match(second.stderr, /^use: HIT local/m)
  assert.match(second.stderr, /2 steps, 2 cached/)

  writeFileSync(join(dir, 'input.txt'), 'two\n')
  const why = strata(['why', 'use', '--data-dir', data], dir)
  assert.equal(why.status, 0, why.stderr)
  assert.match(why.stdout, /^make: would HIT$/m)
  assert.match(why.stdout, /^use: would MISS$/m)
  assert.match(why.stdout, /^ {2}- workspace file input\.txt changed content$/m)

  const json = strata(['run', '--data-dir', data, '--json'], dir)
  assert.equal(json.status, 0, json.stderr)
  const events = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string, step?: string })
  assert.deepEqual(events.filter((e) => e.type === 'hit' || e.type === 'captured').map((e) => `${e.type}:${e.step}`), ['hit:make', 'captured:use'])
  assert.equal(events.at(-1)!.type, 'done')
})

test('strata run exits with the failing step\'s code and commits nothing', (t) => {
  const dir = workDir(t, 'cli-run')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: ok\n    run: "true"\n  - name: broken\n    run: echo partial > /opt/partial; exit 3\n')
  const r = strata(['run', '--data-dir', data], dir)
  assert.equal(r.status, 3)
  assert.match(r.stderr, /^broken: FAILED \(exit 3\)$/m)
  const layers = strata(['layers', '--data-dir', data, '--json'], dir)
  assert.equal(layers.stdout.trim().split('\n').length, 1, 'only the successful step left a layer')
})

test('strata run names file, line and column of a bad strata.yml and runs nothing', (t) => {
  const dir = workDir(t, 'cli-run')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: a\n    run: touch /should-not-exist\n    colour: blue\n')
  const r = strata(['run', '--data-dir', join(dir, 'data')], dir)
  assert.equal(r.status, 1)
  assert.match(r.stderr, /strata\.yml:5:5.*colour/)
})

test('strata exec prints a key that chains the next step', (t) => {
  const dir = workDir(t, 'cli-run')
  const data = join(dir, 'data')
  const a = strata(['exec', '--name', 'a', '--data-dir', data, '--', 'sh', '-c', 'echo from-a > /opt/strata-exec-a'], dir)
  assert.equal(a.status, 0, a.stderr)
  const keyA = a.stdout.trim().split('\n').at(-1)!
  assert.match(keyA, /^bafy/)
  const b = strata(['exec', '--name', 'b', '--parent', keyA, '--data-dir', data, '--', 'cat /opt/strata-exec-a'], dir)
  assert.equal(b.status, 0, b.stderr)
  assert.match(b.stdout, /from-a/)
  const again = strata(['exec', '--name', 'a', '--data-dir', data, '--', 'sh', '-c', 'echo from-a > /opt/strata-exec-a'], dir)
  assert.equal(again.stdout.trim().split('\n').at(-1), keyA)
  assert.match(again.stderr, /^a: HIT local/m)
})

test('strata run with a relative data dir (--data-dir data, ./data, STRATA_DATA_DIR=data) mounts the layers below a step and hits again', (t) => {
  const dir = workDir(t, 'yaml-reldata')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: lower',
    '    run: mkdir -p /opt/strata-yaml-rel && echo low > /opt/strata-yaml-rel/a',
    '  - name: upper',
    '    run: cat /opt/strata-yaml-rel/a > /opt/strata-yaml-rel/b',
    ''
  ].join('\n'))
  for (const [args, env] of [[['--data-dir', 'data'], {}], [['--data-dir', './data2'], {}], [[], { STRATA_DATA_DIR: 'data3' }]] as const) {
    const first = strata(['run', ...args], dir, env)
    assert.equal(first.status, 0, first.stderr)
    assert.match(first.stderr, /^upper: MISS → ran in/m)
    const second = strata(['run', ...args], dir, env)
    assert.equal(second.status, 0, second.stderr)
    assert.match(second.stderr, /^upper: HIT local/m)
    assert.match(second.stderr, /2 steps, 2 cached/)
  }
})

test('ERR_INPUT_LIMIT names the flag that raises the limit, and that flag does', (t) => {
  const dir = workDir(t, 'yaml-inlimit')
  const data = join(dir, 'data')
  mkdirSync(join(dir, 'src'))
  for (const n of ['a', 'b', 'c']) writeFileSync(join(dir, 'src', n), 'twelve bytes')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: read\n    run: cat src/a\n    filter: [src]\n')
  const files = strata(['run', '--data-dir', data, '--max-input-files', '3'], dir)
  assert.equal(files.status, 1)
  assert.match(files.stderr, /step "read": inputs exceed 3 files; narrow the inputs or raise --max-input-files .*\(ERR_INPUT_LIMIT\)/)
  const bytes = strata(['run', '--data-dir', data, '--max-input-bytes', '30'], dir)
  assert.equal(bytes.status, 1)
  assert.match(bytes.stderr, /inputs exceed 30 bytes; narrow the inputs or raise --max-input-bytes/)
  const raised = strata(['run', '--data-dir', data, '--max-input-files', '4', '--max-input-bytes', '36'], dir)
  assert.equal(raised.status, 0, raised.stderr)
  assert.match(raised.stderr, /^read: MISS → ran/m)
  const bad = strata(['run', '--data-dir', data, '--max-input-files', 'many'], dir)
  assert.equal(bad.status, 2)
  assert.match(bad.stderr, /--max-input-files: "many" is not a whole number/)
})

test('STRATA_SALT keys the cache: the same fleet salt hits, another misses', (t) => {
  const dir = workDir(t, 'yaml-salt')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'in.txt'), 'x\n')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: s\n    run: cat in.txt\n    filter: [in.txt]\n')
  const first = strata(['run', '--data-dir', data], dir, { STRATA_SALT: 'fleet-a' })
  assert.equal(first.status, 0, first.stderr)
  assert.match(strata(['run', '--data-dir', data], dir, { STRATA_SALT: 'fleet-a' }).stderr, /^s: HIT local/m)
  assert.match(strata(['run', '--data-dir', data], dir, { STRATA_SALT: 'fleet-b' }).stderr, /^s: MISS/m)
  assert.match(strata(['run', '--data-dir', data], dir).stderr, /^s: MISS/m)
})

test('--tmp-size and STRATA_TMP_SIZE bound a step\'s /tmp when strata.yml does not; a bad size is a usage error', (t) => {
  const dir = workDir(t, 'cli-run')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: fill\n    run: dd if=/dev/zero of=/tmp/f bs=64k count=32 2>/dev/null\n    cache: false\n')
  const small = strata(['run', '--data-dir', data, '--tmp-size', '1m'], dir)
  assert.equal(small.status, 1, small.stderr)
  const byEnv = strata(['run', '--data-dir', data], dir, { STRATA_TMP_SIZE: '1m' })
  assert.equal(byEnv.status, 1, byEnv.stderr)
  const enough = strata(['run', '--data-dir', data, '--tmp-size', '8m'], dir)
  assert.equal(enough.status, 0, enough.stderr)
  const bad = strata(['run', '--data-dir', data, '--tmp-size', 'lots'], dir)
  assert.equal(bad.status, 2, bad.stderr)
  assert.match(bad.stderr, /--tmp-size "lots" is not a size/)
})
