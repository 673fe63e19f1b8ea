import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CID } from 'multiformats/cid'
import { openRecord, recordKey, TrustPolicy } from '@strata/records'
import type { StepRecord } from '@strata/records'
import { openStore } from '@strata/store'
import { strata, workDir } from './helpers.ts'

/** The record a run stored for `key` in `scope`, opened under a reader that trusts `trusted` only. */
async function storedRecord (dataDir: string, key: string, scope: string, trusted: string[]): Promise<StepRecord> {
  const store = await openStore({ dataDir })
  try {
    const bytes = await store.getRecord(recordKey(key, scope))
    assert.ok(bytes !== undefined, `no record for ${key} in ${scope}`)
    return openRecord(CID.parse(key), bytes, new TrustPolicy('12D3KooWreader', trusted).reading([scope]))
  } finally {
    await store.close()
  }
}

const capturedKey = (stdout: string, step: string): string =>
  (stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string, step?: string, key?: string }).find((e) => e.type === 'captured' && e.step === step)!).key!

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

test('keygen-writer writes NAME-1 (0600) and prints NAME-1:KEY; --rotate or NAME-2 makes the next; none is overwritten', (t) => {
  const dir = workDir(t, 'cli-writer')
  const data = join(dir, 'data')
  const first = strata(['keygen-writer', 'ci-main', '--data-dir', data], dir)
  assert.equal(first.status, 0, first.stderr)
  assert.match(first.stdout, /^ci-main-1:[A-Za-z0-9+/]{43}=\n$/)
  const file = join(data, 'writer-keys', 'ci-main-1.key')
  assert.equal(statSync(file).mode & 0o777, 0o600)
  assert.match(readFileSync(file, 'utf8'), /^ci-main-1:[A-Za-z0-9+/]{86}==\n$/)
  const again = strata(['keygen-writer', 'ci-main', '--data-dir', data], dir)
  assert.equal(again.status, 1)
  assert.match(again.stderr, /ci-main-1\.key exists: not overwriting a key \(use --rotate/)
  const rotated = strata(['keygen-writer', 'ci-main', '--rotate', '--data-dir', data], dir)
  assert.equal(rotated.status, 0, rotated.stderr)
  assert.match(rotated.stdout, /^ci-main-2:/)
  const explicit = strata(['keygen-writer', 'ci-main-7', '--dir', join(dir, 'keys')], dir)
  assert.match(explicit.stdout, /^ci-main-7:/)
  assert.ok(existsSync(join(dir, 'keys', 'ci-main-7.key')))
  assert.equal(strata(['keygen-writer', 'no spaces', '--data-dir', data], dir).status, 2)
})

test('strata run --writer-key signs its records with the key; without one, with the node identity; the key never reaches a step', async (t) => {
  const dir = workDir(t, 'cli-writer')
  const data = join(dir, 'data')
  // The key lives outside the data dir, as a CI secret would.
  const made = strata(['keygen-writer', 'ci-main', '--dir', join(dir, 'secrets')], dir)
  const pub = made.stdout.trim()
  const keyFile = join(dir, 'secrets', 'ci-main-1.key')
  const peerId = strata(['id', '--data-dir', data], dir).stdout.trim().split('\n')[0]!.split(/\s+/)[0]!
  writeFileSync(join(dir, 'strata.yml'), `base: host\nsalt: ${dir}\nsteps:\n  - name: look\n    env: [STRATA_WRITER_KEY_FILE]\n    run: echo "env=[\${STRATA_WRITER_KEY_FILE:-}]"; if [ -e ${keyFile} ]; then echo key=visible; else echo key=hidden; fi; ls ${dir}/secrets >/dev/null\n`)
  const signed = strata(['run', '--data-dir', data, '--scope', 'main', '--json'], dir, { STRATA_WRITER_KEY_FILE: keyFile })
  assert.equal(signed.status, 0, signed.stderr)
  assert.match(signed.stderr, /env=\[\]$/m, 'the path is not in the step\'s environment')
  assert.match(signed.stderr, /key=hidden$/m, 'the key file is not in the step\'s filesystem, though the dir it is in is')
  assert.doesNotMatch(signed.stderr, /ci-main-1\.key/)
  const record = await storedRecord(data, capturedKey(signed.stdout, 'look'), 'main', [`${pub}@main`])
  assert.equal(record.writer, pub)
  assert.equal(record.producer, peerId, 'the producer is the node that has the layer')
  await assert.rejects(storedRecord(data, capturedKey(signed.stdout, 'look'), 'main', [peerId]), { reason: 'untrusted-signer' })

  // Without a key, the node identity signs: trusted where the peer id is, not where only the key is.
  const unsigned = strata(['run', '--data-dir', data, '--scope', 'pr/1', '--json'], dir)
  assert.equal(unsigned.status, 0, unsigned.stderr)
  const own = await storedRecord(data, capturedKey(unsigned.stdout, 'look'), 'pr/1', [peerId])
  assert.equal(own.writer, null)
  await assert.rejects(storedRecord(data, capturedKey(unsigned.stdout, 'look'), 'pr/1', [pub]), { reason: 'untrusted-signer' })

  // A bad key file stops the run before any step, naming the file.
  writeFileSync(join(dir, 'bad.key'), 'not a key\n')
  writeFileSync(join(dir, 'strata.yml'), `base: host\nsteps:\n  - name: never\n    run: touch ${dir}/ran\n`)
  const bad = strata(['run', '--data-dir', data, '--writer-key', join(dir, 'bad.key')], dir)
  assert.equal(bad.status, 1)
  assert.match(bad.stderr, new RegExp(`${join(dir, 'bad.key')}: not a writer key.*\\(ERR_WRITER_KEY\\)`))
  assert.equal(existsSync(join(dir, 'ran')), false)
})
