import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata, workDir } from './helpers.ts'

const DIAMOND = [
  'base: host',
  'steps:',
  '  - { name: system, filter: [], run: "mkdir -p /opt/g && echo system > /opt/g/system" }',
  '  - { name: node-deps, use: [system], filter: [], run: "sleep 1; echo node > /opt/g/node" }',
  '  - { name: py-deps, use: [system], filter: [], run: "sleep 1; echo py > /opt/g/py" }',
  '  - { name: test, use: [node-deps, py-deps], filter: [], cache: false, run: "cat /opt/g/system /opt/g/node /opt/g/py" }',
  ''
].join('\n')

test('strata run runs branches at once, prefixes their lines, and sums up the critical path and the time saved', (t) => {
  const dir = workDir(t, 'cli-graph')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), DIAMOND)
  const r = strata(['run', '--data-dir', data, '--jobs', '2'], dir)
  assert.equal(r.status, 0, r.stderr)
  // Steps that can run at once carry their name on each line, even where one step at a time would not.
  assert.match(r.stdout + r.stderr, /^test \| system$/m)
  assert.match(r.stderr, /^strata: 4 steps, 0 cached, in [\d.]+s; critical path system → (node-deps|py-deps) → test \([\d.]+s\), [\d.]+s saved by running steps at once$/m)

  const json = strata(['run', '--data-dir', data, '--json', '-j', '1'], dir)
  assert.equal(json.status, 0, json.stderr)
  const done = JSON.parse(json.stdout.trim().split('\n').at(-1)!) as { type: string, criticalPath: { steps: string[] }, stepsMs: number }
  assert.equal(done.type, 'done')
  assert.equal(done.criticalPath.steps[0], 'system')
  assert.equal(done.criticalPath.steps.at(-1), 'test')

  assert.equal(strata(['run', '--data-dir', data, '--jobs', '0'], dir).status, 2, '--jobs 0 is a usage error')
})

test('strata run stops at the first failure unless --keep-going, and names what it skipped', (t) => {
  const dir = workDir(t, 'cli-graph')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - { name: broken, filter: [], run: "exit 5" }',
    '  - { name: fine, use: [], filter: [], run: "sleep 0.5; echo fine > /opt/fine" }',
    '  - { name: above, use: [broken], filter: [], run: "true" }',
    ''
  ].join('\n'))
  const r = strata(['run', '--data-dir', data, '--keep-going'], dir)
  assert.equal(r.status, 5, r.stderr)
  assert.match(r.stderr, /^broken: FAILED \(exit 5\)$/m)
  assert.match(r.stderr, /^fine: MISS → ran in/m)
  assert.match(r.stderr, /^above: SKIPPED \(a step it uses failed\)$/m)
})
