import { test } from 'node:test'
import assert from 'node:assert/strict'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata, workDir } from './helpers.ts'

test('strata run writes in --scope / STRATA_SCOPE and reads --read-scope / STRATA_READ_SCOPES in order', (t) => {
  const dir = workDir(t, 'cli-trust')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), `base: host\nsalt: ${dir}\nsteps:\n  - name: make\n    run: echo made >> ${dir}/ran\n`)
  const onMain = strata(['run', '--data-dir', data, '--scope', 'main'], dir)
  assert.equal(onMain.status, 0, onMain.stderr)
  assert.match(onMain.stderr, /^make: MISS/m)
  // A branch reading only itself misses; one falling back to main hits.
  const isolated = strata(['run', '--data-dir', data], dir, { STRATA_SCOPE: 'pr/1' })
  assert.match(isolated.stderr, /^make: MISS/m)
  const fallback = strata(['run', '--data-dir', data, '--scope', 'pr/2', '--read-scope', 'pr/2', '--read-scope', 'main'], dir)
  assert.match(fallback.stderr, /^make: HIT local/m)
  const byEnv = strata(['run', '--data-dir', data], dir, { STRATA_SCOPE: 'pr/3', STRATA_READ_SCOPES: 'pr/3,main' })
  assert.match(byEnv.stderr, /^make: HIT local/m)
  // A later epoch disowns main's record.
  const bumped = strata(['run', '--data-dir', data, '--scope', 'main', '--epoch', '1'], dir)
  assert.match(bumped.stderr, /^make: MISS/m)
})

test('bad scope and epoch values are usage errors naming the value', (t) => {
  const dir = workDir(t, 'cli-trust')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: s\n    run: "true"\n')
  for (const [args, env, what] of [
    [['--scope', '../main'], {}, /scope "\.\.\/main" must be/],
    [[], { STRATA_READ_SCOPES: 'main,a//b' }, /scope "a\/\/b" must be/],
    [['--epoch', 'soon'], {}, /epoch must be a whole number/],
    [[], { STRATA_EPOCH: '-1' }, /epoch must be a whole number/]
  ] as const) {
    const r = strata(['run', '--data-dir', data, ...args], dir, env)
    assert.equal(r.status, 2, r.stderr)
    assert.match(r.stderr, what)
  }
})

test('keygen-psk writes <data-dir>/swarm.key by default, 0600, and does not overwrite it', (t) => {
  const dir = workDir(t, 'cli-trust')
  const data = join(dir, 'data')
  const r = strata(['keygen-psk', '--data-dir', data], dir)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.trim(), join(data, 'swarm.key'))
  assert.equal(statSync(join(data, 'swarm.key')).mode & 0o777, 0o600)
  const again = strata(['keygen-psk', '--data-dir', data], dir)
  assert.equal(again.status, 1)
  assert.match(again.stderr, /swarm\.key exists: not overwriting/)
  const made = strata(['keygen-psk', join(dir, 'k')], dir)
  assert.equal(made.status, 0, made.stderr)
  assert.equal(made.stdout.trim(), join(dir, 'k'))
  assert.equal(statSync(join(dir, 'k')).mode & 0o777, 0o600)
  assert.equal(strata(['keygen-psk', join(dir, 'k')], dir).status, 1)
  assert.equal(strata(['keygen-psk', 'a', 'b'], dir).status, 2)
})
