import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata, workDir } from './helpers.ts'

/**
 * A work dir whose `sub` is a small filesystem: a tmpfs with `options` (size=,
 * nr_inodes=), or an ext4 of `ext4` MiB in an image file (a loop device, freed on
 * unmount). After the test it is unmounted first, then the dir removed.
 */
function withSmallFs (t: { after: (fn: () => void) => void }, name: string, sub: string, fs: { tmpfs: string } | { ext4: number }): string {
  const dir = mkdtempSync(`/var/tmp/strata-${name}-`)
  const mnt = join(dir, sub)
  mkdirSync(mnt, { recursive: true })
  let mounted = false
  t.after(() => {
    try {
      if (mounted) execFileSync('umount', [mnt])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
  if ('tmpfs' in fs) {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `${fs.tmpfs},mode=0755`, 'tmpfs', mnt])
  } else {
    const image = join(dir, 'fs.img')
    writeFileSync(image, '')
    truncateSync(image, fs.ext4 << 20)
    execFileSync('mkfs.ext4', ['-q', '-F', image])
    execFileSync('mount', ['-o', 'loop', image, mnt])
  }
  mounted = true
  return dir
}

/** Spill mounts (scratch space off a full data dir) left on the machine that name `dir`'s run. */
function spillMounts (): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(' - tmpfs strata-spill '))
}

const caching = (stderr: string): string[] => stderr.split('\n').filter((l) => /caching is off/.test(l))

for (const [kind, fs] of [['tmpfs', { tmpfs: 'size=24m' }], ['ext4', { ext4: 32 }]] as const) {
  test(`a step that fills the store's disk (${kind}) does not fail the run: the next steps run uncached, and it is said once, in one line`, (t) => {
    const dir = withSmallFs(t, 'diskfull-fill', 'data', fs)
    const data = join(dir, 'data')
    const before = spillMounts()
    writeFileSync(join(dir, 'strata.yml'), [
      'base: host',
      'steps:',
      '  - name: fill',
      '    run: |',
      '      mkdir -p /opt/strata-diskfull',
      '      for i in $(seq 300); do echo "$i" > /opt/strata-diskfull/f$i; done',
      '      dd if=/dev/zero of=/opt/strata-diskfull/fill bs=64k 2>/dev/null || true',
      '  - name: after',
      '    run: test "$(cat /opt/strata-diskfull/f300)" = 300 && echo written > /opt/strata-diskfull/after && echo AFTER=yes >> "$STRATA_ENV"',
      '  - name: last',
      '    run: test "$AFTER" = yes && test "$(cat /opt/strata-diskfull/after)" = written',
      ''
    ].join('\n'))
    const r = strata(['run', '--data-dir', data], dir)
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stderr, /^fill: MISS → ran in [\d.]+s, not cached: .*no space left on device/im)
    assert.equal(caching(r.stderr).length, 1, r.stderr)
    assert.match(caching(r.stderr)[0]!, /^strata: caching is off for the rest of this run: the filesystem of .*\/data is full$/)
    assert.match(r.stderr, /^after: MISS → ran in [\d.]+s, not cached$/m)
    assert.match(r.stderr, /^last: MISS → ran in [\d.]+s, not cached$/m)
    assert.match(r.stderr, /^strata: 3 steps, 0 cached/m)
    assert.deepEqual(r.stderr.split('\n').filter((l) => l.startsWith('{')), [], 'a log line in the human output')
    // Nothing of the run is left: no scratch dir on the store, no scratch space mounted elsewhere.
    assert.deepEqual(readdirSync(join(data, 'runner', 'run')), [])
    assert.deepEqual(spillMounts(), before)
  })
}

test('when the store cannot take a step\'s scratch dir, the step runs on scratch space elsewhere and nothing is committed', (t) => {
  // The data dir's filesystem has room; its scratch dir has no inode left, as a full disk or a quota would make it.
  const dir = withSmallFs(t, 'diskfull-mkdir', 'data/runner/run', { tmpfs: 'size=1m,nr_inodes=1' })
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), 'base: host\nsteps:\n  - name: one\n    run: mkdir -p /opt/strata-diskfull-m && echo 1 > /opt/strata-diskfull-m/one\n  - name: two\n    run: test "$(cat /opt/strata-diskfull-m/one)" = 1\n')
  const r = strata(['run', '--data-dir', data], dir)
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(caching(r.stderr), [`strata: caching is off for the rest of this run: the filesystem of ${data} is full`])
  assert.match(r.stderr, /^one: MISS → ran in [\d.]+s, not cached$/m)
  assert.match(r.stderr, /^two: MISS → ran in [\d.]+s, not cached$/m)
  const layers = strata(['layers', '--data-dir', data, '--json'], dir)
  assert.equal(layers.stdout.trim(), '', 'a layer was committed with caching off')
})

test('a step whose $STRATA_ENV value exec would refuse fails naming the variable, commits nothing, and runs again next time', (t) => {
  const dir = workDir(t, 'diskfull-env')
  const data = join(dir, 'data')
  writeFileSync(join(dir, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: ok',
    '    run: echo SMALL=1 >> "$STRATA_ENV"',
    '  - name: big',
    '    run: printf \'BIG=%s\\n\' "$(head -c 500000 /dev/zero | tr \'\\0\' x)" >> "$STRATA_ENV"',
    '  - name: after',
    '    run: echo never',
    ''
  ].join('\n'))
  for (const attempt of [1, 2]) {
    const r = strata(['run', '--data-dir', data], dir)
    assert.equal(r.status, 1, r.stderr)
    assert.match(r.stderr, attempt === 1 ? /^ok: MISS → ran/m : /^ok: HIT local/m)
    assert.match(r.stderr, /^big: FAILED \(step "big": \$STRATA_ENV: BIG is 500004 bytes as NAME=value; exec takes at most 131071 per variable\)$/m)
    assert.doesNotMatch(r.stderr, /^big: HIT/m)
    assert.match(r.stderr, /^after: SKIPPED \(a step it uses failed\)$/m)
    assert.doesNotMatch(r.stderr, /^after: (HIT|MISS)/m)
  }
  const layers = strata(['layers', '--data-dir', data, '--json'], dir)
  assert.equal(layers.stdout.trim().split('\n').length, 1, 'only the step before it left a layer')
})
