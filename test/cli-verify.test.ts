import { test } from 'node:test'
import assert from 'node:assert/strict'
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { buildTree, tempDir } from '@strata/testing'
import { strata, workDir } from './helpers.ts'

function flipByte (path: string, offset: number): void {
  const fd = openSync(path, 'r+')
  try {
    const b = Buffer.alloc(1)
    readSync(fd, b, 0, 1, offset)
    b[0] = b[0]! ^ 0xff
    writeSync(fd, b, 0, 1, offset)
  } finally {
    closeSync(fd)
  }
}

const content = Array.from({ length: 5000 }, (_, i) => `line ${i}\n`).join('')

test('a flipped byte in a cached layer makes the next run miss and run the step again; the run after hits with good bytes', (t) => {
  const dir = workDir(t, 'cli-verify')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'content.txt'), content)
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: make',
    '    run: mkdir -p /opt/strata-verify-test && cp content.txt /opt/strata-verify-test/out',
    '    inputs: [content.txt]',
    ''
  ].join('\n'))
  const first = strata(['run', '--data-dir', data], dir)
  assert.equal(first.status, 0, first.stderr)
  const root = JSON.parse(strata(['layers', '--data-dir', data, '--json']).stdout.trim()).root as string
  const file = join(data, 'layers', root, 'opt/strata-verify-test/out')
  assert.equal(readFileSync(file, 'utf8'), content)
  flipByte(file, 100)

  const second = strata(['run', '--data-dir', data], dir)
  assert.equal(second.status, 0, second.stderr)
  assert.match(second.stderr, /^make: MISS \(cached layer corrupt\) → ran in/m, 'a tampered layer is not a hit')
  // The rerun's layer differs from the bad one at least by its files' times; the bad one is no longer listed.
  const now = strata(['layers', '--data-dir', data, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l).root as string)
  assert.equal(now.length, 1)
  assert.ok(readFileSync(join(data, 'layers', now[0]!, 'opt/strata-verify-test/out'), 'utf8') === content, 'the fresh capture has the good bytes')

  const third = strata(['run', '--data-dir', data], dir)
  assert.equal(third.status, 0, third.stderr)
  assert.match(third.stderr, /^make: HIT local/m)
  const good = strata(['verify', now[0]!, '--data-dir', data])
  assert.equal(good.status, 0, good.stderr)
  assert.match(good.stdout, new RegExp(`^${now[0]!}  ok `, 'm'))
  if (now[0] !== root) {
    // Until a collection removes it, the bad layer is reported as marked.
    const all = strata(['verify', '--data-dir', data])
    assert.equal(all.status, 1)
    assert.match(all.stdout, new RegExp(`^${root}  corrupt: stat \\(marked before\\)$`, 'm'))
  }
})

test('strata verify exits 0 on a clean store, names a flipped byte\'s file and exits 1, and --json says the same', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'a'), { 'lib': { dir: { 'big.bin': content.repeat(20), 'small.txt': 'hi\n' } } })
  buildTree(join(dir, 'b'), { 'x': 'y\n' })
  const a = strata(['pack', join(dir, 'a'), '--data-dir', data, '--json'])
  const b = strata(['pack', join(dir, 'b'), '--data-dir', data, '--json'])
  const ra = JSON.parse(a.stdout).root as string
  const rb = JSON.parse(b.stdout).root as string
  const ok = strata(['verify', '--data-dir', data])
  assert.equal(ok.status, 0, ok.stderr)
  assert.equal(ok.stdout.trim().split('\n').length, 2)
  assert.match(ok.stdout, / {2}ok {2}\(/)

  flipByte(join(data, 'layers', ra, 'lib/big.bin'), 300_000)
  const bad = strata(['verify', '--data-dir', data])
  assert.equal(bad.status, 1)
  assert.match(bad.stdout, new RegExp(`^${ra}  corrupt: content: lib/big.bin$`, 'm'))
  assert.match(bad.stdout, new RegExp(`^${rb}  ok `, 'm'))
  const one = strata(['verify', rb, '--data-dir', data, '--json'])
  assert.equal(one.status, 0)
  assert.equal(JSON.parse(one.stdout).status, 'ok')
  const json = strata(['verify', ra, '--data-dir', data, '--json'])
  assert.equal(json.status, 1)
  assert.deepEqual(((v) => [v.status, v.path, v.marked])(JSON.parse(json.stdout)), ['corrupt', 'lib/big.bin', true])
  assert.doesNotMatch(strata(['layers', '--data-dir', data]).stdout, new RegExp(ra), 'a marked layer is not listed')
})

test('strata unpack of a layer with a flipped byte fails and marks it', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'a'), { 'big.bin': content.repeat(20) })
  const root = JSON.parse(strata(['pack', join(dir, 'a'), '--data-dir', data, '--json']).stdout).root as string
  flipByte(join(data, 'layers', root, 'big.bin'), 10)
  const out = strata(['unpack', root, join(dir, 'out'), '--data-dir', data])
  assert.equal(out.status, 1)
  assert.match(out.stderr, /ERR_BLOCK_MISMATCH/)
  const v = strata(['verify', root, '--data-dir', data, '--json'])
  assert.equal(v.status, 1)
  assert.equal(JSON.parse(v.stdout).marked, true, 'unpack marked the layer')
})
