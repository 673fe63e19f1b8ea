import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { dirname } from 'node:path'
import { parsePipeline } from '../src/index.ts'
import type { RunnerEvent } from '../src/index.ts'
import { applyFilter, compileFilter } from '../src/filter.ts'
import { UNSALTED } from '../src/key.ts'
import { scanWorkspace } from '../src/workspace.ts'
import { tempDir, writeTree } from '@strata/testing'
import { harness, mountsMentioning, pipelineIn, sideChannel, statuses } from './helpers.ts'

const keys = (events: readonly RunnerEvent[]): string[] => events.flatMap((e) => e.type === 'key' ? [e.key] : [])

test('filter: last match wins, a directory match covers what it holds, .git only when named', () => {
  const rels = ['.git', '.git/HEAD', 'README.md', 'package.json', 'src', 'src/a.ts', 'src/a.test.ts', 'src/lib', 'src/lib/b.ts', 'src/lib/b.test.ts', 'docs', 'docs/x.md']
  const entries = rels.map((rel) => {
    const slash = rel.lastIndexOf('/')
    return { rel, parent: slash === -1 ? -1 : rels.indexOf(rel.slice(0, slash)), dir: ['.git', 'src', 'src/lib', 'docs'].includes(rel) }
  })
  const seen = (patterns: string[] | null): string[] => {
    const r = applyFilter(entries, patterns === null ? null : compileFilter(patterns))
    return rels.filter((_, i) => r.visible[i] === 1)
  }
  assert.deepEqual(seen(null), rels.filter((r) => !r.startsWith('.git')))
  assert.deepEqual(seen(['src/**', 'package.json', '!src/**/*.test.ts']), ['package.json', 'src', 'src/a.ts', 'src/lib', 'src/lib/b.ts'])
  assert.deepEqual(seen(['docs']), ['docs', 'docs/x.md'], 'a bare directory name keeps the directory and what it holds')
  assert.deepEqual(seen(['**/b.ts']), ['src', 'src/lib', 'src/lib/b.ts'], 'directories leading to a kept file are seen')
  assert.deepEqual(seen(['*']), rels.filter((r) => !r.startsWith('.git')), '* matches top-level names, and a matched directory keeps its content')
  assert.deepEqual(seen(['.git', 'README.md']), ['.git', '.git/HEAD', 'README.md'], 'a pattern naming .git reaches it')
  assert.deepEqual(seen(['!src', 'src/lib/b.ts']), ['src', 'src/lib', 'src/lib/b.ts'], 'a later pattern wins over a negated parent')
  const r = applyFilter(entries, compileFilter(['src/**', '!src/**/*.test.ts', 'srcs/**', '!nothing']))
  assert.deepEqual(r.unmatched, ['srcs/**', '!nothing'])
  assert.deepEqual(r.hidden, ['.git', 'README.md', 'package.json', 'src/a.test.ts', 'src/lib/b.test.ts', 'docs'], 'one whiteout per top-most entry left out')
})

test('a checkout copied to another host path gives the same keys and hits every step; files are captured at the workspace path', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const root = tempDir(t)
  const proj = `${root}/proj`
  writeTree(proj, { 'package.json': '{"name":"x"}', src: { 'a.ts': 'export const a = 1\n' }, '.git': { HEAD: 'ref: refs/heads/main\n' } })
  const p = pipelineIn(proj, `base: host
steps:
  - name: deps
    filter: [package.json]
    run: |
      echo deps >> ${side.dir}/ran
      pwd > ${side.dir}/pwd
      mkdir node_modules && echo dep > node_modules/dep.js
  - name: build
    run: |
      echo build >> ${side.dir}/ran
      cat node_modules/dep.js > ${side.dir}/dep-in-build
      ls -a > ${side.dir}/ls-build
      mkdir dist && cat src/a.ts > dist/a.js
  - name: check
    run: |
      echo check >> ${side.dir}/ran
      cat node_modules/dep.js dist/a.js > ${side.dir}/check
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), ['deps', 'build', 'check'])
  assert.equal(readFileSync(`${side.dir}/pwd`, 'utf8'), '/workspace\n', 'the default cwd is the workspace path')
  assert.equal(readFileSync(`${side.dir}/dep-in-build`, 'utf8'), 'dep\n', 'node_modules written by a step is there for the next one')
  assert.deepEqual(readFileSync(`${side.dir}/ls-build`, 'utf8').split('\n').filter((l) => l !== ''), ['.', '..', 'node_modules', 'package.json', 'src', 'strata.yml'], '.git is not in the view')
  assert.equal(readFileSync(`${side.dir}/check`, 'utf8'), 'dep\nexport const a = 1\n')
  assert.deepEqual(execFileSync('ls', ['-a', proj], { encoding: 'utf8' }).split('\n').filter((l) => l !== ''), ['.', '..', '.git', 'package.json', 'src', 'strata.yml'], 'the host checkout is untouched')
  const first = keys(h.events)

  // Another host path, another inode for every file: the same keys, every step hits.
  const copy = `${root}/elsewhere/proj2`
  execFileSync('mkdir', ['-p', `${root}/elsewhere`])
  execFileSync('cp', ['-a', proj, copy])
  const p2 = parsePipeline(readFileSync(`${copy}/strata.yml`, 'utf8'), { file: `${copy}/strata.yml` })
  h.events.length = 0
  rmSync(`${side.dir}/ran`)
  await h.runner.run(p2, { onEvent: h.onEvent })
  assert.deepEqual(keys(h.events), first)
  assert.deepEqual(statuses(h.events), ['deps:hit', 'build:hit', 'check:hit'])
  assert.deepEqual(side.lines(), [])

  // A hit mounts the captured node_modules and dist at the workspace path for a step on top.
  const last = (await h.runner.run(p2)).steps.at(-1)!.key
  await h.runner.exec({ name: 'after', parent: last, cache: false, workspace: { dir: copy, path: '/workspace' }, run: `cat /workspace/node_modules/dep.js /workspace/dist/a.js > ${side.dir}/after` })
  assert.equal(readFileSync(`${side.dir}/after`, 'utf8'), 'dep\nexport const a = 1\n')
  assert.deepEqual(mountsMentioning(h.dataDir), [], 'no mount is left behind')
})

test('a file outside a step\'s filter: a change still hits and the step cannot read it; a file inside: a miss that why names', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = `${tempDir(t)}/proj`
  writeTree(proj, { 'package.json': '{}', 'package-lock.json': '{}', 'README.md': 'v1', src: { 'a.ts': 'a1', 'a.test.ts': 't1' } })
  const p = pipelineIn(proj, `base: host
steps:
  - name: deps
    filter: [package.json, package-lock.json]
    run: |
      echo deps >> ${side.dir}/ran
      if cat README.md; then echo readable > ${side.dir}/readme; else echo absent > ${side.dir}/readme; fi
      ls -A > ${side.dir}/ls
  - name: build
    filter: ["src/**", "!src/**/*.test.ts"]
    run: |
      echo build >> ${side.dir}/ran
      find . | sort > ${side.dir}/find
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), ['deps', 'build'])
  assert.equal(readFileSync(`${side.dir}/readme`, 'utf8'), 'absent\n', 'a file outside the filter cannot be read')
  assert.equal(readFileSync(`${side.dir}/ls`, 'utf8'), 'package-lock.json\npackage.json\n')
  assert.equal(readFileSync(`${side.dir}/find`, 'utf8'), '.\n./src\n./src/a.ts\n')

  writeFileSync(`${proj}/README.md`, 'v2')
  writeFileSync(`${proj}/src/a.test.ts`, 't2')
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['deps:hit', 'build:hit'], 'files outside both filters changed: both hit')

  writeFileSync(`${proj}/package-lock.json`, '{"lockfileVersion":3}')
  const why = await h.runner.why(p, 'deps')
  assert.equal(why.steps[0]!.hit, false)
  assert.deepEqual(why.steps[0]!.reasons, ['workspace file package-lock.json changed content'])
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  // deps writes nothing into its layer: running again, it makes the same (empty) layer, and build still hits.
  assert.deepEqual(statuses(h.events), ['deps:ran', 'build:hit'])
})

test('a filter pattern or input glob that matches nothing is reported in the key event and in why', async (t) => {
  const h = await harness(t)
  const proj = `${tempDir(t)}/proj`
  writeTree(proj, { 'package.json': '{}' })
  const p = pipelineIn(proj, `base: host
steps:
  - name: a
    filter: [package.json, pakage-lock.json]
    inputs: [/etc/strata-no-such-dir/*.conf]
    run: "true"
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  const key = h.events.find((e) => e.type === 'key')
  assert.ok(key?.type === 'key')
  assert.deepEqual(key.warnings, ['input glob /etc/strata-no-such-dir/*.conf matches nothing', 'filter pattern pakage-lock.json matches nothing in the workspace'])
  const why = await h.runner.why(p, 'a')
  assert.deepEqual(why.steps[0]!.warnings, key.warnings)
})

test('a workspace under /tmp is mounted at the workspace path; its path moves with workspace.path', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = mkdtempSync('/tmp/strata-workspace-test-')
  t.after(() => rmSync(proj, { recursive: true, force: true }))
  writeTree(proj, { 'in.txt': 'from tmp' })
  const p = pipelineIn(proj, `base: host
workspace:
  path: /src/app
steps:
  - name: a
    run: |
      pwd > ${side.dir}/pwd
      cat in.txt > ${side.dir}/in
      echo out > out.txt
  - name: b
    run: cat /src/app/out.txt > ${side.dir}/out
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.equal(readFileSync(`${side.dir}/pwd`, 'utf8'), '/src/app\n')
  assert.equal(readFileSync(`${side.dir}/in`, 'utf8'), 'from tmp')
  assert.equal(readFileSync(`${side.dir}/out`, 'utf8'), 'out\n')
})

test('deleting a checkout file in a step hides it from later steps, also on a hit', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = `${tempDir(t)}/proj`
  writeTree(proj, { 'gone.txt': 'x', keep: { 'k.txt': 'k' } })
  const p = pipelineIn(proj, `base: host
steps:
  - name: rm
    run: rm gone.txt && rm -rf keep && mkdir keep && echo new > keep/n.txt
  - name: look
    cache: false
    run: ls -R > ${side.dir}/ls
`)
  await h.runner.run(p)
  const first = readFileSync(`${side.dir}/ls`, 'utf8')
  assert.equal(first, '.:\nkeep\nstrata.yml\n\n./keep:\nn.txt\n')
  rmSync(`${side.dir}/ls`)
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['rm:hit', 'look:ran'])
  assert.equal(readFileSync(`${side.dir}/ls`, 'utf8'), first)
})

test('a checkout that holds the data dir: the data dir is neither walked, keyed nor seen, and the steps hit again', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = dirname(h.dataDir)
  writeTree(proj, { 'app.txt': 'app' })
  const p = pipelineIn(proj, `base: host
steps:
  - name: a
    run: |
      ls -A > ${side.dir}/ls
      echo built > out.txt
  - name: b
    run: cat out.txt app.txt > ${side.dir}/b
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.equal(readFileSync(`${side.dir}/ls`, 'utf8'), 'app.txt\nstrata.yml\n', 'the data dir is not in the view')
  assert.equal(readFileSync(`${side.dir}/b`, 'utf8'), 'built\napp')
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(statuses(h.events), ['a:hit', 'b:hit'], 'what the runs wrote to the data dir is not in the key')
  assert.deepEqual(mountsMentioning(h.dataDir), [])
})

test('the stat cache never hides a change: each scan equals a scan without a cache', async (t) => {
  const dir = tempDir(t)
  const ws = `${dir}/checkout`
  writeTree(ws, { a: 'one', b: { c: 'two', d: 'three' }, e: 'four', '.git': { HEAD: 'x' } })
  await delay(1100) // older than the racy window: the cache trusts these records
  const cacheDir = `${dir}/cache`
  const scan = async (cache: string, filter?: string[]): Promise<string> =>
    Buffer.from((await scanWorkspace('s', { dir: ws, path: '/workspace' }, filter, { cacheDir: cache, digestKey: UNSALTED })).digest).toString('hex')
  let fresh = 0
  const same = async (what: string, filter?: string[]): Promise<void> => {
    const expected = await scan(`${dir}/fresh-${fresh++}`, filter)
    assert.equal(await scan(cacheDir, filter), expected, what)
    assert.equal(await scan(cacheDir, filter), expected, `${what}, again`)
  }
  await same('cold')
  await same('with a filter', ['b/**'])
  const before = await scan(cacheDir)
  writeFileSync(`${ws}/b/c`, 'TWO') // same size, new content
  assert.notEqual(await scan(cacheDir), before)
  await same('a file rewritten at the same size')
  rmSync(`${ws}/a`)
  writeFileSync(`${ws}/a0`, 'one')
  await same('a file renamed')
  chmodSync(`${ws}/e`, 0o755)
  await same('an execute bit set')
  writeFileSync(`${ws}/.git/HEAD`, 'y')
  assert.equal(await scan(cacheDir), await scan(`${dir}/fresh-git`), '.git is not in the digest')
  await delay(1100)
  writeFileSync(`${ws}/b/d`, 'THREE')
  await same('a change after the cache trusted its record', ['b/**'])
})
