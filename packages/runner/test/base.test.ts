import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readdirSync, realpathSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { tempDir } from '@strata/testing'
import { parsePipeline } from '../src/index.ts'
import { baseIdentity } from '../src/base.ts'
import { harness, SIDE_ROOT, sideChannel, statuses } from './helpers.ts'

/** A root filesystem with just /bin/sh and /bin/cat and their libraries, copied from the host. */
function makeRootfs (dir: string): void {
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', SIDE_ROOT.slice(1)]) mkdirSync(`${dir}/${d}`, { recursive: true })
  for (const [bin, as] of [['/bin/sh', 'sh'], ['/bin/cat', 'cat']] as const) {
    const real = realpathSync(bin)
    copyFileSync(real, `${dir}/bin/${as}`)
    execFileSync('chmod', ['755', `${dir}/bin/${as}`])
    for (const m of execFileSync('ldd', [real], { encoding: 'utf8' }).matchAll(/(\/\S+)/g)) {
      const lib = m[1]!
      mkdirSync(dirname(`${dir}${lib}`), { recursive: true })
      copyFileSync(lib, `${dir}${lib}`)
    }
  }
  writeFileSync(`${dir}/etc/motd`, 'rootfs motd\n')
}

test('a rootfs directory base: steps see only it, and its content is part of the key', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const root = tempDir(t)
  makeRootfs(`${root}/rootfs`)
  const yml = `base: ./rootfs
steps:
  - name: in-rootfs
    run: |
      test ! -e /usr/bin/apt-get
      cat /etc/motd >> ${side.dir}/ran
      echo made > /made
  - name: above
    run: cat /made >> ${side.dir}/ran
`
  writeFileSync(`${root}/strata.yml`, yml)
  const p = parsePipeline(yml, { file: `${root}/strata.yml` })
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), ['rootfs motd', 'made'])
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['in-rootfs:hit', 'above:hit'])
  assert.equal(readdirSync(`${h.dataDir}/runner`).filter((n) => n.startsWith('base-')).length, 1, 'the tree digest is cached')

  writeFileSync(`${root}/rootfs/etc/motd`, 'changed motd\n')
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['in-rootfs:ran', 'above:ran'])
  assert.deepEqual(side.lines(), ['rootfs motd', 'made', 'changed motd', 'made'])
  const why = await h.runner.why(p, 'in-rootfs')
  assert.equal(why.steps[0]!.hit, true)
})

test('base identity: host is os-release + arch + base-id; a tree digest ignores times', async (t) => {
  const cache = tempDir(t)
  const a = await baseIdentity({ kind: 'host' }, undefined, cache)
  const b = await baseIdentity({ kind: 'host' }, 'ami-1', cache)
  assert.equal(a.kind, 'host')
  assert.equal(b.id, 'ami-1')
  const root = tempDir(t)
  mkdirSync(`${root}/r/etc`, { recursive: true })
  writeFileSync(`${root}/r/etc/x`, 'x')
  const d1 = await baseIdentity({ kind: 'dir', path: `${root}/r` }, undefined, cache)
  execFileSync('touch', ['-d', '2001-01-01', `${root}/r/etc/x`])
  const d2 = await baseIdentity({ kind: 'dir', path: `${root}/r` }, undefined, cache)
  assert.deepEqual(d1, d2)
  writeFileSync(`${root}/r/etc/x`, 'y')
  const d3 = await baseIdentity({ kind: 'dir', path: `${root}/r` }, undefined, cache)
  assert.notDeepEqual(d1, d3)
  await assert.rejects(baseIdentity({ kind: 'dir', path: `${root}/nope` }, undefined, cache), { code: 'ERR_BASE' })
})
