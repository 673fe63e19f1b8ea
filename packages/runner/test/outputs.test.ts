import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { chownSync, existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { pino } from 'pino'
import { parsePipeline, StepFailedError } from '../src/index.ts'
import type { RunnerEvent } from '../src/index.ts'
import { Sink, tempDir } from '@strata/testing'
import { harness, pipelineIn, sideChannel, statuses } from './helpers.ts'

/** Every entry under `dir`: type, mode, owner, mtime in ns, content digest or link target. */
function snapshot (dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (rel: string): void => {
    const p = rel === '' ? dir : `${dir}/${rel}`
    const st = lstatSync(p, { bigint: true })
    const what = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? `link ${readlinkSync(p)}` : `file ${createHash('sha256').update(readFileSync(p)).digest('hex')}`
    out[rel] = `${what} mode=${(st.mode & 0o7777n).toString(8)} uid=${st.uid} mtime=${st.mtimeNs}`
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(rel === '' ? n : `${rel}/${n}`)
  }
  walk('')
  return out
}

const BUILD = `
    run: |
      mkdir -p dist/sub
      head -c 300000 /dev/urandom > dist/app.bin
      printf '#!/bin/sh\\necho hi\\n' > dist/run.sh && chmod 0751 dist/run.sh
      echo nested > dist/sub/n.txt
      cp dist/run.sh dist/suid && chmod 4755 dist/suid
      ln -s app.bin dist/link
      touch -h -d '2001-02-03 04:05:06.123456789' dist/app.bin
      echo report > report.xml
    outputs: [dist, report.xml]
`

test('outputs reach the host after a miss and, byte for byte with modes and times, after a hit', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host\nsteps:\n  - name: build${BUILD}`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['build:ran'])
  const delivered = h.events.find((e) => e.type === 'outputs') as Extract<RunnerEvent, { type: 'outputs' }>
  assert.deepEqual(delivered.paths, ['dist', 'report.xml'])
  assert.ok(delivered.bytes > 300_000)
  const afterMiss = snapshot(`${proj}/dist`)
  assert.equal(readFileSync(`${proj}/report.xml`, 'utf8'), 'report\n')
  assert.match(afterMiss['app.bin']!, /mtime=981173106123456789$/, 'the nanoseconds of a time survive')
  assert.match(afterMiss['run.sh']!, /mode=751 /)
  assert.match(afterMiss.suid!, /mode=755 /, 'setuid is not written into the checkout')
  assert.match(afterMiss.link!, /^link app\.bin /)

  rmSync(`${proj}/dist`, { recursive: true })
  rmSync(`${proj}/report.xml`)
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['build:hit'])
  assert.ok(h.events.some((e) => e.type === 'outputs'))
  assert.deepEqual(snapshot(`${proj}/dist`), afterMiss)
  assert.equal(readFileSync(`${proj}/report.xml`, 'utf8'), 'report\n')

  // A file changed on the host since is replaced by the step's.
  writeFileSync(`${proj}/dist/run.sh`, 'changed')
  await h.runner.run(p)
  assert.deepEqual(snapshot(`${proj}/dist`), afterMiss)
})

test('outputs are relative to the workspace, whatever the step\'s cwd, and take the checkout\'s owner', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  chownSync(proj, 1234, 2345)
  // `gen` exists only in the steps' filesystem: on the host it is made for the output.
  const p = pipelineIn(proj, `base: host
steps:
  - name: prepare
    run: mkdir gen
  - name: gen
    cwd: gen
    run: mkdir -p out && echo generated > out/file.txt && chown 0:0 out/file.txt
    outputs: [gen/out/file.txt]
`)
  await h.runner.run(p)
  assert.equal(readFileSync(`${proj}/gen/out/file.txt`, 'utf8'), 'generated\n')
  for (const path of ['gen', 'gen/out', 'gen/out/file.txt']) {
    const st = lstatSync(`${proj}/${path}`)
    assert.deepEqual([st.uid, st.gid], [1234, 2345], path)
  }
})

test('a failing step writes no outputs; a missing output fails the step and commits nothing', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  const failing = pipelineIn(proj, 'base: host\nsteps:\n  - name: build\n    run: mkdir dist && echo half > dist/a && exit 3\n    outputs: [dist]\n')
  await assert.rejects(h.runner.run(failing), StepFailedError)
  assert.equal(existsSync(`${proj}/dist`), false)

  const missing = pipelineIn(proj, 'base: host\nsteps:\n  - name: build\n    run: mkdir dist && echo a > dist/a\n    outputs: [dist, coverage/lcov.info]\n')
  await assert.rejects(h.runner.run(missing, { onEvent: h.onEvent }), (err: Error & { code: string, path: string }) => {
    assert.equal(err.code, 'ERR_OUTPUT_NOT_FOUND')
    assert.equal(err.path, 'coverage/lcov.info')
    assert.match(err.message, /output coverage\/lcov\.info does not exist/)
    return true
  })
  const failed = h.events.find((e) => e.type === 'failed') as Extract<RunnerEvent, { type: 'failed' }>
  assert.equal(failed.reason, 'error')
  assert.equal(failed.error.name, 'OutputNotFoundError')
  assert.ok(!h.events.some((e) => e.type === 'ran' || e.type === 'captured'))
  assert.equal((await h.store.listLayers()).length, 0, 'nothing is committed')
  assert.equal(existsSync(`${proj}/dist`), false, 'no output of a failed step is written')
})

test('outputs refuse .., absolute paths and symlinks that lead out of the workspace', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  for (const bad of ['../x', '/etc', 'a/../../b', '.']) {
    assert.throws(() => parsePipeline(`base: host\nsteps:\n  - name: s\n    run: "true"\n    outputs: ["${bad}"]\n`, { file: `${proj}/strata.yml` }), { code: 'ERR_PIPELINE_INVALID_VALUE' })
  }
  const cases: Array<[string, string]> = [
    ['ln -s /etc dist', 'dist'],
    ['mkdir dist && ln -s ../../../../../etc/passwd dist/pw', 'dist'],
    ['mkdir -p real && ln -s /etc via && true', 'via/passwd']
  ]
  for (const [run, out] of cases) {
    const p = pipelineIn(proj, `base: host\nsteps:\n  - name: s\n    run: ${run}\n    outputs: [${out}]\n`)
    await assert.rejects(h.runner.run(p), { code: 'ERR_OUTPUT_UNSAFE' }, run)
    assert.equal(existsSync(`${proj}/${out}`), false)
  }
  // On the host, an output is never written through a symlink.
  const outside = tempDir(t)
  symlinkSync(outside, `${proj}/linked`)
  const p = pipelineIn(proj, 'base: host\nsteps:\n  - name: s\n    run: rm linked && mkdir linked && echo x > linked/f\n    outputs: [linked/f]\n')
  await assert.rejects(h.runner.run(p), { code: 'ERR_OUTPUT_UNSAFE' })
  assert.deepEqual(readdirSync(outside), [])

  // Outputs are relative to the workspace: a step whose cwd is outside it writes nothing there; nor does an output that would reach the data dir.
  const tag = randomBytes(4).toString('hex')
  const elsewhere = pipelineIn(proj, `base: host\nsteps:\n  - name: s\n    cwd: /opt\n    run: mkdir x-${tag}\n    outputs: [x-${tag}]\n`)
  await assert.rejects(h.runner.run(elsewhere), { code: 'ERR_OUTPUT_NOT_FOUND' })
  assert.equal(existsSync(`/opt/x-${tag}`), false)
  const parent = dirname(h.dataDir)
  const data = pipelineIn(parent, 'base: host\nsteps:\n  - name: s\n    run: "true"\n    outputs: [data]\n')
  await assert.rejects(h.runner.run(data), { code: 'ERR_OUTPUT_UNSAFE' })
})

test('export writes the run\'s merged changes: a file a later step deleted is absent, the base is not there', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  const tag = randomBytes(4).toString('hex')
  const p = pipelineIn(proj, `base: host
steps:
  - name: one
    run: mkdir -p /opt/x-${tag}/d && echo a > /opt/x-${tag}/a && echo b > /opt/x-${tag}/b && echo c > /opt/x-${tag}/d/c && chmod 0600 /opt/x-${tag}/a
  - name: two
    run: rm /opt/x-${tag}/b && rm -r /opt/x-${tag}/d && mkdir /opt/x-${tag}/d && echo e > /opt/x-${tag}/d/e
`)
  const dir = `${tempDir(t)}/export`
  await h.runner.run(p, { export: dir, onEvent: h.onEvent })
  const root = `${dir}/opt/x-${tag}`
  assert.deepEqual(readdirSync(root).sort(), ['a', 'd'])
  assert.deepEqual(readdirSync(`${root}/d`), ['e'], 'an opaque dir hides what was below it')
  assert.equal(lstatSync(`${root}/a`).mode & 0o7777, 0o600)
  assert.equal(existsSync(`${dir}/etc/os-release`), false, 'the base is not exported')
  assert.ok(h.events.some((e) => e.type === 'exported' && e.dir === dir))

  // A hit exports the same; a dir that is not empty is refused before anything runs.
  const again = `${tempDir(t)}/export`
  await h.runner.run(p, { export: again })
  assert.deepEqual(readdirSync(`${again}/opt/x-${tag}`).sort(), ['a', 'd'])
  await assert.rejects(h.runner.run(p, { export: again }), { code: 'ERR_EXPORT_DIR' })
})

test('a secret reaches the step, a changed secret still hits, and its value is nowhere under the data dir', async (t) => {
  const logged = new Sink()
  const logger = pino({ level: 'trace' }, logged)
  const first = `s3cr3t-${randomBytes(12).toString('hex')}`
  const second = `s3cr3t-${randomBytes(12).toString('hex')}`
  const h = await harness(t, { env: { NPM_TOKEN_T: first }, logger })
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: deps
    run: printf %s "$NPM_TOKEN_T" | sha256sum | cut -c1-64 >> ${side.dir}/ran; test -n "$NPM_TOKEN_T"; echo done > out.txt
    secrets: [NPM_TOKEN_T]
    outputs: [out.txt]
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), [createHash('sha256').update(first).digest('hex')], 'the step saw the secret')
  const runner = await h.reopen({ env: { NPM_TOKEN_T: second }, logger })
  h.events.length = 0
  await runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['deps:hit'], 'the secret is not in the key')
  const why = await runner.why(p, 'deps')
  const shown = JSON.stringify(why) + JSON.stringify(h.events) + logged.text
  for (const value of [first, second]) {
    assert.equal(shown.includes(value), false, 'not in why, the events or the log')
    const found = filesHolding(h.dataDir, Buffer.from(value))
    assert.deepEqual(found, [], 'no byte of the data dir holds it')
  }
})

function filesHolding (dir: string, needle: Buffer): string[] {
  const found: string[] = []
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue
    const p = `${e.parentPath}/${e.name}`
    if (readFileSync(p).includes(needle)) found.push(p)
  }
  return found
}

test('cache: { ttl } turns an older record into a miss, "expired", which why explains', async (t) => {
  const parsed = parsePipeline('base: host\nsteps:\n  - name: a\n    run: "true"\n    cache: { ttl: 12h }\n  - name: b\n    run: "true"\n    cache: false\n  - name: c\n    run: "true"\n    cache: { ttl: 7d }\n')
  assert.deepEqual(parsed.steps.map((s) => [s.cache, s.ttlMs]), [[true, 12 * 3600_000], [false, undefined], [true, 7 * 86_400_000]])
  assert.throws(() => parsePipeline('base: host\nsteps:\n  - name: a\n    run: "true"\n    cache: { ttl: soon }\n'), { code: 'ERR_PIPELINE_INVALID_VALUE' })
  assert.throws(() => parsePipeline('base: host\nsteps:\n  - name: a\n    run: "true"\n    cache: { tll: 1h }\n'), { code: 'ERR_PIPELINE_UNKNOWN_KEY' })

  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  // strata.yml is in the workspace: the step reads none of it, or the edit below would change its key.
  const yml = (ttl: string): string => `base: host\nsteps:\n  - name: apt\n    filter: []\n    run: echo apt >> ${side.dir}/ran\n    cache: { ttl: ${ttl} }\n`
  const long = pipelineIn(proj, yml('12h'))
  await h.runner.run(long)
  await h.runner.run(long, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['apt:hit'])
  // The record is now older than a second: past a ttl of 1s whatever the machine's speed.
  await delay(1100)
  const short = pipelineIn(proj, yml('1s'))
  const why = await h.runner.why(short, 'apt')
  assert.equal(why.steps[0]!.hit, false)
  assert.ok(why.steps[0]!.expired !== undefined)
  assert.deepEqual(why.steps[0]!.changes, [], 'the key is the same: ttl is not in it')
  assert.match(why.steps[0]!.reasons.join('\n'), /^expired \(created [\d.]+s ago, ttl 1s\)$/m)
  h.events.length = 0
  await h.runner.run(short, { onEvent: h.onEvent })
  const miss = h.events.find((e) => e.type === 'miss') as Extract<RunnerEvent, { type: 'miss' }>
  assert.equal(miss.reason, 'expired')
  assert.deepEqual(side.lines(), ['apt', 'apt'])
  h.events.length = 0
  await h.runner.run(long, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['apt:hit'], 'the run that expired it made a new record')
})
