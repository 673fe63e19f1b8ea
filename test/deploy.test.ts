// What deploy/ ships: the systemd unit as systemd reads it, and the cloud-init
// example's shape (the keys cloud-init takes, the files it writes).
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { parse } from 'yaml'
import { readConfigFile } from '../packages/cli/src/config-file.ts'
import { DAEMON_OPTIONS } from '../packages/cli/src/commands/daemon.ts'
import { workDir } from './helpers.ts'

const root = join(import.meta.dirname, '..')
const unitFile = join(root, 'deploy', 'systemd', 'strata-daemon.service')
const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0

/** `systemd-analyze verify` on `unit`, its ExecStart binary replaced by a stub (verify checks that it exists). */
function verify (dir: string, unit: string): { status: number | null, output: string } {
  const stub = join(dir, 'strata')
  writeFileSync(stub, '#!/bin/sh\n')
  chmodSync(stub, 0o755)
  const file = join(dir, 'strata-daemon.service')
  writeFileSync(file, unit.replaceAll('/usr/local/bin/strata daemon', `${stub} daemon`))
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', file], { encoding: 'utf8' })
  return { status: r.status, output: r.stdout + r.stderr }
}

test('the systemd unit passes systemd-analyze verify without a warning', { skip: hasAnalyze ? false : 'systemd-analyze is not installed (Debian package systemd; .ci/run installs it)' }, (t) => {
  const dir = workDir(t, 'deploy-unit')
  const unit = readFileSync(unitFile, 'utf8')
  assert.match(unit, /^ExecStart=\/usr\/local\/bin\/strata daemon$/m)
  const ok = verify(dir, unit)
  assert.equal(ok.status, 0, ok.output)
  assert.equal(ok.output, '')
  // The check sees a mistake: a misspelt key is only a warning, so the output counts too.
  const bad = verify(dir, unit.replace('Restart=on-failure', 'Restrat=on-failure'))
  assert.match(bad.output, /Unknown key 'Restrat'/)
})

const CLOUD_CONFIG_KEYS = new Set(['package_update', 'packages', 'write_files', 'runcmd'])
const WRITE_FILE_KEYS = new Set(['path', 'content', 'permissions', 'owner', 'encoding', 'append', 'defer'])

test('the cloud-init example is a cloud-config that writes the daemon\'s config, a strata command and the unit, then starts it', async (t) => {
  const text = readFileSync(join(root, 'deploy', 'cloud-init.yml'), 'utf8')
  assert.ok(text.startsWith('#cloud-config\n'), 'cloud-init reads a user-data file as cloud-config only after this line')
  const doc = parse(text, { strict: true, uniqueKeys: true }) as Record<string, unknown>
  for (const k of Object.keys(doc)) assert.ok(CLOUD_CONFIG_KEYS.has(k), `unexpected top-level key ${k}`)
  assert.equal(typeof doc.package_update, 'boolean')
  assert.ok(Array.isArray(doc.packages) && doc.packages.every((p) => typeof p === 'string'))
  const files = doc.write_files as Array<Record<string, unknown>>
  assert.ok(Array.isArray(files))
  for (const f of files) {
    for (const k of Object.keys(f)) assert.ok(WRITE_FILE_KEYS.has(k), `unexpected write_files key ${k}`)
    assert.equal(typeof f.path, 'string')
    assert.equal(typeof f.content, 'string')
    assert.match(String(f.permissions), /^0[0-7]{3}$/, 'permissions must be a quoted octal string')
  }
  const content = (path: string): string => String(files.find((f) => f.path === path)?.content ?? assert.fail(`no ${path} in write_files`))
  assert.equal(content('/etc/systemd/system/strata-daemon.service'), readFileSync(unitFile, 'utf8'), 'the unit in cloud-init.yml is deploy/systemd/strata-daemon.service')
  const wrapper = content('/usr/local/bin/strata')
  assert.ok(wrapper.startsWith('#!/bin/sh\n'))
  assert.equal(spawnSync('sh', ['-n'], { input: wrapper }).status, 0)
  // The daemon's config is one strata daemon --config accepts.
  const dir = workDir(t, 'deploy-cloud-init')
  writeFileSync(join(dir, 'daemon.yml'), content('/etc/strata/daemon.yml'))
  const values = await readConfigFile(join(dir, 'daemon.yml'), DAEMON_OPTIONS)
  assert.deepEqual(values.bootstrap, ['/dns4/strata-fleet.internal/tcp/7401'])
  const runcmd = doc.runcmd as unknown[]
  assert.ok(Array.isArray(runcmd) && runcmd.every((c) => typeof c === 'string' || (Array.isArray(c) && c.every((x) => typeof x === 'string'))))
  assert.deepEqual(runcmd.at(-1), ['systemctl', 'enable', '--now', 'strata-daemon.service'])
})
