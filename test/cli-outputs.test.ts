import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { bin, strata, workDir } from './helpers.ts'

test('strata run copies outputs to the checkout on a miss and a hit, says RAN (not cached), and --export writes the changes', (t) => {
  const dir = workDir(t, 'cli-outputs')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: build',
    // The export dir lands in the checkout: a step that read the checkout would see it next run.
    '    filter: []',
    '    run: mkdir -p dist && echo built > dist/app.js && echo removed > gone.txt',
    '    outputs: [dist]',
    '  - name: test',
    '    run: rm gone.txt && echo "<ok/>" > report.xml',
    '    outputs: [report.xml]',
    '    cache: false',
    ''
  ].join('\n'))
  const first = strata(['run', '--data-dir', data, '--export', join(dir, 'export')], dir)
  assert.equal(first.status, 0, first.stderr)
  assert.match(first.stderr, /^build: MISS → ran in [\d.]+s, captured/m)
  assert.match(first.stderr, /^build: outputs dist → workspace \(2 entries, 6 B\)$/m)
  assert.match(first.stderr, /^test: RAN \(not cached\) in [\d.]+s$/m)
  assert.doesNotMatch(first.stderr, /^test: MISS/m)
  assert.equal(readFileSync(join(dir, 'dist/app.js'), 'utf8'), 'built\n')
  assert.equal(readFileSync(join(dir, 'report.xml'), 'utf8'), '<ok/>\n')
  assert.equal(existsSync(join(dir, 'gone.txt')), false, 'only declared outputs reach the checkout')
  // The export holds what the run changed, relative to /: the workspace at its path in the steps' view.
  const exported = join(dir, 'export', 'workspace')
  assert.deepEqual(readdirSync(exported).sort(), ['dist', 'report.xml'], 'gone.txt, deleted by the later step, is absent')

  const second = strata(['run', '--data-dir', data], dir)
  assert.equal(second.status, 0, second.stderr)
  assert.match(second.stderr, /^build: HIT local/m)
  assert.match(second.stderr, /^build: outputs dist → workspace/m)
  assert.match(second.stderr, /^test: RAN \(not cached\)/m)
})

test('a missing output fails strata run with exit 1, naming it', (t) => {
  const dir = workDir(t, 'cli-outputs')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: build\n    run: "true"\n    outputs: [dist]\n')
  const r = strata(['run', '--data-dir', join(dir, 'data')], dir)
  assert.equal(r.status, 1, r.stderr)
  assert.match(r.stderr, /^build: FAILED \(step "build": output dist does not exist/m)
  assert.match(r.stderr, /\(ERR_OUTPUT_NOT_FOUND\)$/m)
})

test('strata why says a record is expired, with its age and the ttl', async (t) => {
  const dir = workDir(t, 'cli-outputs')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: apt\n    run: "true"\n    cache: { ttl: 1s }\n')
  assert.equal(strata(['run', '--data-dir', data], dir).status, 0)
  // Older than the ttl whatever the machine's speed.
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const why = strata(['why', 'apt', '--data-dir', data], dir)
  assert.equal(why.status, 0, why.stderr)
  assert.match(why.stdout, /^apt: would MISS: expired$/m)
  assert.match(why.stdout, /^ {2}- expired \(created [\d.]+s ago, ttl 1s\)$/m)
  const run = strata(['run', '--data-dir', data], dir)
  assert.match(run.stderr, /^apt: MISS \(expired\) → ran/m)
})

test('as another user than root, strata run says in one line that it needs root', () => {
  // cwd / and no strata.yml: the check comes before anything is read or created.
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, bin, 'run', '--data-dir', '/var/tmp/strata-cli-outputs-never'], { cwd: '/', encoding: 'utf8' })
  assert.equal(r.status, 1, r.stderr)
  assert.equal(r.stderr, 'strata run needs root (OverlayFS, mount namespaces)\n')
  assert.equal(existsSync('/var/tmp/strata-cli-outputs-never'), false)
})
