import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata, workDir } from './helpers.ts'

/** A diamond: two branches on one step and a join of both. */
function diamond (dir: string): void {
  writeFileSync(join(dir, 'py.txt'), 'one\n')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: system',
    '    use: []',
    '    run: mkdir -p /opt/strata-cli-graph',
    '    filter: []',
    '  - name: node-deps',
    '    use: [system]',
    '    run: echo node > /opt/strata-cli-graph/node',
    '    filter: []',
    '  - name: py-deps',
    '    use: [system]',
    '    run: cat py.txt > /opt/strata-cli-graph/py',
    '    filter: [py.txt]',
    '  - name: test',
    '    use: [node-deps, py-deps]',
    '    run: cat /opt/strata-cli-graph/node /opt/strata-cli-graph/py',
    '    filter: []',
    ''
  ].join('\n'))
}

test('strata run --graph prints each step with what it uses and whether it would hit, and runs nothing', (t) => {
  const dir = workDir(t, 'cli-graph')
  const data = join(dir, 'data')
  diamond(dir)
  const cold = strata(['run', '--graph', '--data-dir', data], dir)
  assert.equal(cold.status, 0, cold.stderr)
  assert.equal(cold.stdout, [
    'system     <- (base)              [would run]',
    'node-deps  <- system              [would run]',
    'py-deps    <- system              [would run]',
    'test       <- node-deps, py-deps  [would run]',
    ''
  ].join('\n'))
  const layers = strata(['layers', '--json', '--data-dir', data], dir)
  assert.equal(layers.stdout.trim(), '', '--graph ran a step')

  const run = strata(['run', '--data-dir', data], dir)
  assert.equal(run.status, 0, run.stderr)
  assert.match(run.stderr, /4 steps, 0 cached/)
  const warm = strata(['run', '--graph', '--data-dir', data], dir)
  assert.equal(warm.status, 0, warm.stderr)
  assert.deepEqual(warm.stdout.trim().split('\n').map((l) => /^(\S+) .*\[(.*)\]$/.exec(l)?.slice(1)), [
    ['system', 'would hit'], ['node-deps', 'would hit'], ['py-deps', 'would hit'], ['test', 'would hit']
  ])

  // A branch's input changes: that branch would run, and the join hits only if it makes the same layer again.
  writeFileSync(join(dir, 'py.txt'), 'two\n')
  const changed = strata(['run', '--graph', '--data-dir', data], dir)
  assert.equal(changed.status, 0, changed.stderr)
  assert.deepEqual(changed.stdout.trim().split('\n').map((l) => /^(\S+) .*\[(.*)\]$/.exec(l)?.slice(1)), [
    ['system', 'would hit'], ['node-deps', 'would hit'], ['py-deps', 'would run'], ['test', 'would hit if the steps below make the same layers']
  ])
})

test('strata run --graph=dot writes Graphviz; another format is a usage error', (t) => {
  const dir = workDir(t, 'cli-graph')
  const data = join(dir, 'data')
  diamond(dir)
  const r = strata(['run', '--graph=dot', '--data-dir', data], dir)
  assert.equal(r.status, 0, r.stderr)
  assert.match(r.stdout, /^digraph strata \{\n/)
  assert.match(r.stdout, /^ {2}"node-deps" -> "test";$/m)
  assert.match(r.stdout, /^ {2}"py-deps" \[label="py-deps\\nwould run", fillcolor="#ffe0b2"\];$/m)
  const svg = spawnSync('dot', ['-Tsvg'], { input: r.stdout, encoding: 'utf8' })
  if (svg.error === undefined) assert.equal(svg.status, 0, svg.stderr)

  const bad = strata(['run', '--graph=svg', '--data-dir', data], dir)
  assert.equal(bad.status, 2)
  assert.match(bad.stderr, /--graph=svg: the graph is printed as text \(--graph\) or Graphviz dot \(--graph=dot\)/)
  const help = strata(['run', '--help'])
  assert.match(help.stdout, /--graph\s+print the steps as a graph/)
})
