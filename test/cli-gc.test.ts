import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { buildTree, tempDir } from '@strata/testing'
import { strata } from './helpers.ts'

test('strata gc on a store without a daemon: recent layers stay under the budget, go over the hard limit; bad sizes are usage errors', (t) => {
  const dir = tempDir(t)
  const data = join(dir, 'data')
  buildTree(join(dir, 'src'), { 'f.txt': 'x'.repeat(100_000) })
  const packed = strata(['pack', join(dir, 'src'), '--data-dir', data])
  assert.equal(packed.status, 0, packed.stderr)
  const root = packed.stdout.trim().split('\n').at(-1)!

  const soft = strata(['gc', '--data-dir', data, '--max-size', '0', '--json'])
  assert.equal(soft.status, 0, soft.stderr)
  const kept = JSON.parse(soft.stdout) as { removed: unknown[], kept: Array<{ root: string, reason: string }> }
  assert.deepEqual(kept.removed, [])
  assert.deepEqual(kept.kept, [{ root, size: 100_000, reason: 'recent' }])

  const dry = strata(['gc', '--data-dir', data, '--max-size', '0', '--hard-limit', '50K', '--dry-run'])
  assert.equal(dry.status, 0, dry.stderr)
  assert.match(dry.stdout, new RegExp(`^would remove ${root} `, 'm'))
  assert.ok(existsSync(join(data, 'layers', root)), 'a dry run removed the layer')

  const hard = strata(['gc', '--data-dir', data, '--max-size', '0', '--hard-limit', '50K'])
  assert.equal(hard.status, 0, hard.stderr)
  assert.match(hard.stdout, new RegExp(`^removed ${root} `, 'm'))
  assert.match(hard.stderr, /100 kB -> 0 B of layers/)
  assert.equal(existsSync(join(data, 'layers', root)), false)

  for (const [args, message] of [
    [['--max-size', '20X'], /--max-size: "20X" is not a size/],
    [[], /--max-size is required/],
    [['--max-size', '1G', '--hard-limit', '1M'], /--hard-limit must not be below --max-size/]
  ] as const) {
    const bad = strata(['gc', '--data-dir', data, ...args])
    assert.equal(bad.status, 2)
    assert.match(bad.stderr, message)
    assert.match(bad.stderr, /usage: strata gc --max-size SIZE/)
  }
})
