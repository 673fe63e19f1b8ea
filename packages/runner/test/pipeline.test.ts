import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import fc from 'fast-check'
import { tempDir } from '@strata/testing'
import { loadPipeline, parseDuration, parsePipeline, parseSize, PIPELINE_LIMITS, PipelineError } from '../src/index.ts'
import type { PipelineLimits } from '../src/index.ts'
import { firstInvalidUtf8 } from '../src/pipeline.ts'

const FILE = '/work/app/strata.yml'

function rejects (text: string, code: string, line: number, column: number, match?: RegExp, limits?: Partial<PipelineLimits>): PipelineError {
  let caught: unknown
  try {
    parsePipeline(text, { file: FILE, ...(limits !== undefined ? { limits } : {}) })
  } catch (err) {
    caught = err
  }
  assert.ok(caught instanceof PipelineError, `expected a PipelineError, got ${String(caught)}`)
  assert.equal(caught.code, code, caught.message)
  assert.equal(caught.file, FILE)
  assert.deepEqual([caught.line, caught.column], [line, column], caught.message)
  assert.ok(caught.message.startsWith(`${FILE}:${line}:${column}: `), caught.message)
  if (match !== undefined) assert.match(caught.message, match)
  return caught
}

test('parses a pipeline with every field, resolving paths', () => {
  const p = parsePipeline(`base: host
base-id: ami-123
salt: 7
steps:
  - name: deps
    run: npm ci
    cwd: app
    env: [NODE_ENV]
    inputs: [/etc/npmrc, "/opt/tools/**/*.json", ../../opt/x]
    filter: [package.json, "src/**/*.ts", "!src/**/*.test.ts"]
    timeout: 10m
  - name: test
    run: npm test
    env: { CI: true, MODE: fast }
    cache: false
    timeout: 90
`, { file: FILE })
  assert.deepEqual(p.base, { kind: 'host' })
  assert.equal(p.baseId, 'ami-123')
  assert.equal(p.salt, '7')
  assert.equal(p.steps.length, 2)
  const [deps, t] = p.steps
  // Steps start in the workspace, strata.yml's directory mounted at /workspace; relative paths are in the view.
  assert.deepEqual(p.workspace, { dir: '/work/app', path: '/workspace' })
  assert.equal(deps!.cwd, '/workspace/app')
  assert.deepEqual(deps!.env, [{ name: 'NODE_ENV' }])
  assert.deepEqual(deps!.inputs, ['/etc/npmrc', '/opt/tools/**/*.json', '/opt/x'])
  assert.deepEqual(deps!.filter, ['package.json', 'src/**/*.ts', '!src/**/*.test.ts'])
  assert.equal(deps!.timeoutMs, 600_000)
  assert.equal(deps!.cache, true)
  assert.equal(t!.cwd, '/workspace')
  assert.equal(t!.filter, undefined)
  assert.deepEqual(t!.env, [{ name: 'CI', value: 'true' }, { name: 'MODE', value: 'fast' }])
  assert.equal(t!.cache, false)
  assert.equal(t!.timeoutMs, 90_000)
})

test('a rootfs base is resolved against the file and steps default to the workspace there too', () => {
  const p = parsePipeline('base: ./rootfs\nsteps:\n  - { name: a, run: "true" }\n', { file: FILE })
  assert.deepEqual(p.base, { kind: 'dir', path: '/work/app/rootfs' })
  assert.equal(p.steps[0]!.cwd, '/workspace')
  const bare = parsePipeline('base: ./rootfs\nsteps:\n  - { name: a, run: "true" }\n')
  assert.equal(bare.workspace, undefined, 'text without a file name has no directory, hence no workspace')
  assert.equal(bare.steps[0]!.cwd, '/')
})

test('workspace: dir resolves against strata.yml, path is absolute and not a reserved path; cwd follows it', () => {
  const p = parsePipeline('base: host\nworkspace:\n  dir: ../src\n  path: /build/src/\nsteps:\n  - { name: a, run: "true" }\n  - { name: b, run: "true", cwd: sub }\n', { file: FILE })
  assert.deepEqual(p.workspace, { dir: '/work/src', path: '/build/src' })
  assert.deepEqual(p.steps.map((s) => s.cwd), ['/build/src', '/build/src/sub'])
  rejects('base: host\nworkspace:\n  path: relative\nsteps:\n  - { name: a, run: "true" }\n', 'ERR_PIPELINE_INVALID_VALUE', 3, 9, /must be an absolute path/)
  rejects('base: host\nworkspace:\n  path: /tmp/w\nsteps:\n  - { name: a, run: "true" }\n', 'ERR_PIPELINE_INVALID_VALUE', 3, 9, /other than \/, \/proc/)
  rejects('base: host\nworkspace:\n  path: /\nsteps:\n  - { name: a, run: "true" }\n', 'ERR_PIPELINE_INVALID_VALUE', 3, 9)
  rejects('base: host\nworkspace:\n  dirr: .\nsteps:\n  - { name: a, run: "true" }\n', 'ERR_PIPELINE_UNKNOWN_KEY', 3, 3, /"dirr"/)
  rejects('base: host\nworkspace: .\nsteps:\n  - { name: a, run: "true" }\n', 'ERR_PIPELINE_WRONG_TYPE', 2, 12)
})

test('inputs in the workspace are refused (the filter keys those); a bad filter pattern is refused at its line', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    inputs: [package.json]\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 14, /input "package.json" is in the workspace \(\/workspace\).*"filter"/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    filter: [src, ../etc/passwd]\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 19, /leaves the workspace/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    filter: ["src/{a,b"]\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 14, /unbalanced braces/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    filter: src\n', 'ERR_PIPELINE_WRONG_TYPE', 5, 13, /a list/)
})

test('an unknown top-level key is an error at the key', () => {
  rejects('base: host\nstep:\n  - name: a\n', 'ERR_PIPELINE_UNKNOWN_KEY', 2, 1, /unknown key "step"/)
})

test('an unknown step key is an error at the key', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    imputs: [x]\n', 'ERR_PIPELINE_UNKNOWN_KEY', 5, 5, /"imputs" in step "a"/)
})

test('a wrong type names what was expected and found', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: [echo, hi]\n', 'ERR_PIPELINE_WRONG_TYPE', 4, 10, /must be a string, found a list/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    cache: "no"\n', 'ERR_PIPELINE_WRONG_TYPE', 5, 12, /true or false/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    inputs: package.json\n', 'ERR_PIPELINE_WRONG_TYPE', 5, 13, /list of paths/)
  rejects('base: host\nsteps: {}\n', 'ERR_PIPELINE_WRONG_TYPE', 2, 8, /"steps" must be a list/)
  rejects('- a\n- b\n', 'ERR_PIPELINE_WRONG_TYPE', 1, 1, /must be a mapping/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    env: { X: [1] }\n', 'ERR_PIPELINE_WRONG_TYPE', 5, 15)
})

test('duplicate step names point at the second and name the first', () => {
  const err = rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n  - name: a\n    run: "false"\n', 'ERR_PIPELINE_DUPLICATE_STEP', 5, 11)
  assert.match(err.message, /already defined at line 3, column 11/)
})

test('missing fields are errors at the mapping that lacks them', () => {
  rejects('steps:\n  - name: a\n    run: "true"\n', 'ERR_PIPELINE_MISSING_FIELD', 1, 1, /no "base"/)
  rejects('base: host\n', 'ERR_PIPELINE_MISSING_FIELD', 1, 1, /no "steps"/)
  rejects('base: host\nsteps:\n  - run: "true"\n', 'ERR_PIPELINE_MISSING_FIELD', 3, 5, /step 1 has no "name"/)
  rejects('base: host\nsteps:\n  - name: a\n  - name: b\n    run: x\n', 'ERR_PIPELINE_MISSING_FIELD', 3, 5, /step "a" has no "run"/)
})

test('invalid values: timeout, names, env, empty lists', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    timeout: soon\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 14, /timeout/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    timeout: 0\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 14)
  rejects('base: host\nsteps:\n  - name: "a b"\n    run: "true"\n', 'ERR_PIPELINE_INVALID_VALUE', 3, 11, /step name/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    env: [1X]\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 11, /not an environment variable name/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    env: [STRATA_ENV]\n', 'ERR_PIPELINE_INVALID_VALUE', 5, 11, /reserved/)
  rejects('base: host\nsteps: []\n', 'ERR_PIPELINE_INVALID_VALUE', 2, 8, /empty/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "  "\n', 'ERR_PIPELINE_INVALID_VALUE', 4, 10, /empty/)
})

test('tmp-size: a size for every step of the pipeline, refused at its line when malformed or out of range', () => {
  const p = parsePipeline('base: host\ntmp-size: 512m\nsteps:\n  - name: a\n    run: "true"\n', { file: FILE })
  assert.equal(p.tmpSize, 512 * 1024 ** 2)
  assert.equal(p.steps[0]!.tmpSize, 512 * 1024 ** 2)
  assert.equal(parsePipeline('base: host\nsteps:\n  - name: a\n    run: "true"\n', { file: FILE }).steps[0]!.tmpSize, undefined)
  rejects('base: host\ntmp-size: lots\nsteps:\n  - name: a\n    run: "true"\n', 'ERR_PIPELINE_INVALID_VALUE', 2, 11, /tmp-size/)
  rejects('base: host\ntmp-size: 1k\nsteps:\n  - name: a\n    run: "true"\n', 'ERR_PIPELINE_INVALID_VALUE', 2, 11, /between 4k and 4t/)
  rejects('base: host\ntmp-size: [1]\nsteps:\n  - name: a\n    run: "true"\n', 'ERR_PIPELINE_WRONG_TYPE', 2, 11, /tmp-size/)
  assert.deepEqual(['4g', '4GiB', '64k', '1048576', '10b', 2048, '4x', '1.5g', 'g'].map((v) => parseSize(v)), [4 * 1024 ** 3, 4 * 1024 ** 3, 65536, 1048576, 10, 2048, undefined, undefined, undefined])
})

test('YAML syntax errors and duplicate keys carry a position', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: x: y\n', 'ERR_PIPELINE_SYNTAX', 4, 10, /Nested mappings/)
  rejects('base: host\n\tsteps: 1\n', 'ERR_PIPELINE_SYNTAX', 2, 1, /Tabs/)
  rejects('base: host\n---\nsteps: []\n', 'ERR_PIPELINE_SYNTAX', 2, 1, /multiple documents/)
  rejects('base: host\nbase: /x\nsteps: []\n', 'ERR_PIPELINE_SYNTAX', 2, 1, /unique/)
})

test('loadPipeline reads a file and names it in errors; a missing file is a read error', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/strata.yml`, 'base: host\nsteps:\n  - name: a\n    run: "true"\n    bogus: 1\n')
  await assert.rejects(loadPipeline(`${dir}/strata.yml`), (err: PipelineError) => err.code === 'ERR_PIPELINE_UNKNOWN_KEY' && err.file === `${dir}/strata.yml` && err.line === 5)
  await assert.rejects(loadPipeline(`${dir}/nope.yml`), { code: 'ERR_PIPELINE_READ' })
})

test('durations', () => {
  assert.equal(parseDuration('30s'), 30_000)
  assert.equal(parseDuration('10m'), 600_000)
  assert.equal(parseDuration('1h30m'), 5_400_000)
  assert.equal(parseDuration('250ms'), 250)
  assert.equal(parseDuration(1.5), 1500)
  assert.equal(parseDuration('12'), 12_000)
  assert.equal(parseDuration('10 minutes'), undefined)
})

/** A file whose one step has `n` env entries in a flow mapping (short keys keep 100k under the size limit). */
function envMapFile (n: number): string {
  const keys: string[] = []
  for (let i = 0; i < n; i++) keys.push(`K${i.toString(36)}: 1`)
  return `base: host\nsteps:\n  - name: a\n    run: "true"\n    env: {${keys.join(',')}}\n`
}

test('a strata.yml that is not UTF-8 is refused at its first bad byte, whichever byte it is', async (t) => {
  const dir = tempDir(t, 'strata-yaml-utf8-')
  const head = Buffer.from('base: host\nsteps:\n  - name: a\n    run: echo é')
  for (const bad of [0xff, 0xfe]) {
    const file = `${dir}/bad-${bad}.yml`
    writeFileSync(file, Buffer.concat([head, Buffer.from([bad]), Buffer.from('\n')]))
    await assert.rejects(loadPipeline(file), (err: PipelineError) => {
      assert.equal(err.code, 'ERR_PIPELINE_ENCODING', err.message)
      assert.deepEqual([err.file, err.line, err.column], [file, 4, 16])
      assert.ok(err.message.startsWith(`${file}:4:16: byte 0x${bad.toString(16).toUpperCase()}`), err.message)
      return true
    })
  }
  writeFileSync(`${dir}/good.yml`, Buffer.concat([head, Buffer.from('\n')]))
  const p = await loadPipeline(`${dir}/good.yml`)
  assert.equal(p.steps[0]!.run, 'echo é')
})

test('firstInvalidUtf8 agrees with a fatal TextDecoder on any bytes', () => {
  const decodes = (b: Uint8Array): boolean => {
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(b)
      return true
    } catch {
      return false
    }
  }
  fc.assert(fc.property(fc.uint8Array({ maxLength: 24 }), (b) => {
    const at = firstInvalidUtf8(b)
    assert.equal(at === b.length, decodes(b))
    // Everything before the reported byte decodes.
    assert.ok(decodes(b.subarray(0, at)))
  }), { numRuns: 5000 })
  fc.assert(fc.property(fc.string({ unit: 'binary' }), (s) => firstInvalidUtf8(Buffer.from(s)) === Buffer.byteLength(s)))
})

test('a strata.yml over the size limit is refused without being read whole; a run: up to that limit is accepted', async (t) => {
  const dir = tempDir(t, 'strata-yaml-size-')
  const head = 'base: host\nsteps:\n  - name: a\n    run: "'
  const fill = (n: number): string => head + 'x'.repeat(n - head.length - 2) + '"\n'
  writeFileSync(`${dir}/big.yml`, fill(PIPELINE_LIMITS.bytes + 1))
  await assert.rejects(loadPipeline(`${dir}/big.yml`), { code: 'ERR_PIPELINE_TOO_LARGE', name: 'PipelineTooLargeError', message: /may be at most 1048576 bytes/ })
  assert.throws(() => parsePipeline(fill(PIPELINE_LIMITS.bytes + 1)), { code: 'ERR_PIPELINE_TOO_LARGE' })
  // A device that never ends is bounded the same way.
  await assert.rejects(loadPipeline('/dev/zero'), { code: 'ERR_PIPELINE_TOO_LARGE' })
  writeFileSync(`${dir}/max.yml`, fill(PIPELINE_LIMITS.bytes))
  const p = await loadPipeline(`${dir}/max.yml`)
  assert.equal(p.steps[0]!.run.length, PIPELINE_LIMITS.bytes - head.length - 2)
})

test('steps, env and inputs entries past their bounds are refused at the first entry past them', () => {
  const steps = Array.from({ length: PIPELINE_LIMITS.steps + 1 }, (_, i) => `  - { name: s${i}, run: "true" }`)
  rejects(`base: host\nsteps:\n${steps.join('\n')}\n`, 'ERR_PIPELINE_LIMIT', PIPELINE_LIMITS.steps + 3, 5, /more than 500 steps.*at most 499/)
  assert.equal(parsePipeline(`base: host\nsteps:\n${steps.slice(0, -1).join('\n')}\n`).steps.length, PIPELINE_LIMITS.steps)
  const names = Array.from({ length: PIPELINE_LIMITS.env + 1 }, (_, i) => `E${i}`)
  rejects(`base: host\nsteps:\n  - name: a\n    run: "true"\n    env: [${names.join(', ')}]\n`, 'ERR_PIPELINE_LIMIT', 5, 11 + names.slice(0, -1).join(', ').length + 2, /step "a" declares more than 1024 "env" entries/)
  const paths = Array.from({ length: PIPELINE_LIMITS.inputs + 1 }, (_, i) => `f${i}`)
  rejects(`base: host\nsteps:\n  - name: a\n    run: "true"\n    inputs: [${paths.join(', ')}]\n`, 'ERR_PIPELINE_LIMIT', 5, 14 + paths.slice(0, -1).join(', ').length + 2, /"inputs" entries/)
})

test('a 100k-key env map is refused at its bound after a linear parse, and validated whole when the bound is raised', () => {
  const text = envMapFile(100_000)
  assert.ok(Buffer.byteLength(text) <= PIPELINE_LIMITS.bytes)
  const err = rejects(text, 'ERR_PIPELINE_LIMIT', 5, 11 + Array.from({ length: PIPELINE_LIMITS.env }, (_, i) => `K${i.toString(36)}: 1`).join(',').length + 1)
  assert.match(err.message, /more than 1024 "env" entries/)
  const p = parsePipeline(text, { file: FILE, limits: { env: 100_000 } })
  assert.equal(p.steps[0]!.env.length, 100_000)
})

test('duplicate keys are refused in every mapping, env maps included', () => {
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    env: { A: 1, B: 2, A: 3 }\n', 'ERR_PIPELINE_SYNTAX', 5, 24, /unique/)
  rejects('base: host\nsteps:\n  - name: a\n    run: "true"\n    name: b\n', 'ERR_PIPELINE_SYNTAX', 5, 5, /unique/)
})

test('loadPipeline stops with the signal\'s reason: aborted before, while reading, or while validating', async (t) => {
  const dir = tempDir(t, 'strata-yaml-abort-')
  const file = `${dir}/strata.yml`
  writeFileSync(file, envMapFile(100_000))
  const limits = { env: 100_000 }
  await assert.rejects(loadPipeline(file, { signal: AbortSignal.abort(), limits }), { name: 'AbortError' })
  // Aborted after 1..200 turns of the event loop: during the read or the validation (which yields every few hundred entries), never a result.
  for (const turns of [1, 3, 10, 50, 200]) {
    const ac = new AbortController()
    let left = turns
    const tick = (): void => {
      if (--left === 0) ac.abort()
      else setImmediate(tick)
    }
    setImmediate(tick)
    await assert.rejects(loadPipeline(file, { signal: ac.signal, limits }), { name: 'AbortError' }, `aborted after ${turns} turns`)
  }
  // The same file, not aborted, loads: the aborts above were not failures of their own.
  assert.equal((await loadPipeline(file, { limits })).steps[0]!.env.length, 100_000)
})

/** A pipeline of `true` steps, each `[name, extra keys]`, one key a line under it. */
function stepsFile (steps: Array<[string, ...string[]]>, top = ''): string {
  return `base: host\n${top}steps:\n${steps.map(([name, ...keys]) => [`  - name: ${name}`, '    run: "true"', ...keys.map((k) => `    ${k}`)].join('\n')).join('\n')}\n`
}

test('use: absent is the step before (the first step: the base), [] is the base alone, a list keeps its order', () => {
  const p = parsePipeline(stepsFile([['system'], ['node', 'use: [system]'], ['py', 'use: [system]'], ['test', 'use: [py, node]'], ['after'], ['alone', 'use: []']]), { file: FILE })
  assert.deepEqual(p.steps.map((s) => [s.name, s.use]), [
    ['system', []], ['node', ['system']], ['py', ['system']], ['test', ['py', 'node']], ['after', ['test']], ['alone', []]
  ])
  // A file without `use` is the chain it always was.
  assert.deepEqual(parsePipeline(stepsFile([['a'], ['b'], ['c']])).steps.map((s) => s.use), [[], ['a'], ['b']])
})

test('use may name a step defined later in the file', () => {
  const p = parsePipeline(stepsFile([['test', 'use: [deps]'], ['deps', 'use: []']]), { file: FILE })
  assert.deepEqual(p.steps.map((s) => [s.name, s.use]), [['test', ['deps']], ['deps', []]])
})

test('use errors name file, line and column: an unknown step with the closest name, itself, a name twice, not a list of names', () => {
  const unknown = rejects(stepsFile([['node-deps'], ['py-deps'], ['test', 'use: [node-deps, py-dep]']]), 'ERR_PIPELINE_UNKNOWN_STEP', 9, 22,
    /step "test" uses "py-dep", which is not a step of this file; did you mean "py-deps"\?/)
  assert.equal(unknown.name, 'PipelineUnknownStepError')
  rejects(stepsFile([['a'], ['b', 'use: [zzzzzz]']]), 'ERR_PIPELINE_UNKNOWN_STEP', 7, 11, /not a step of this file$/)
  rejects(stepsFile([['a'], ['b', 'use: [a, b]']]), 'ERR_PIPELINE_SELF_USE', 7, 14, /step "b" uses itself/)
  rejects(stepsFile([['a'], ['b', 'use:', '  - a', '  - a']]), 'ERR_PIPELINE_DUPLICATE_USE', 9, 9, /step "b" uses "a" twice \(first at line 8, column 9\)/)
  rejects(stepsFile([['a'], ['b', 'use: a']]), 'ERR_PIPELINE_WRONG_TYPE', 7, 10, /step "b" "use" must be a list of step names, found/)
  rejects(stepsFile([['a'], ['b', 'use: [a, [c]]']]), 'ERR_PIPELINE_WRONG_TYPE', 7, 14, /"use" entry must be a string/)
  rejects(stepsFile([['a'], ['b', 'use: [1]']]), 'ERR_PIPELINE_WRONG_TYPE', 7, 11)
  // The first problem in the file is the one reported, whether it needs the later steps or not.
  rejects(stepsFile([['a', 'use: [nope]'], ['b', 'use: [b]']]), 'ERR_PIPELINE_UNKNOWN_STEP', 5, 11)
})

test('a cycle in use is refused at the entry that closes it and named in the direction of use', () => {
  const two = rejects(stepsFile([['a', 'use: [b]'], ['b', 'use: [a]']]), 'ERR_PIPELINE_CYCLE', 5, 11, /"use" makes a cycle: a -> b -> a \(each uses the next\)$/)
  assert.equal(two.name, 'PipelineCycleError')
  assert.deepEqual((two as unknown as { cycle: string[] }).cycle, ['a', 'b', 'a'])
  // Longer, off to the side of steps that are fine, and found whichever step the search starts from.
  rejects(stepsFile([['base-ok', 'use: []'], ['x', 'use: [base-ok, z]'], ['y', 'use: [x]'], ['z', 'use: [y]']]), 'ERR_PIPELINE_CYCLE', 8, 20, /cycle: x -> z -> y -> x/)
  // The default (the step before) takes part: the message says so.
  rejects(stepsFile([['a', 'use: [b]'], ['b']]), 'ERR_PIPELINE_CYCLE', 5, 11, /cycle: a -> b -> a .*; "b" has no "use": it builds on the step before it/)
})

test('reproducible: per step, the top-level value the default of the others; refused unless true or false', () => {
  const p = parsePipeline(stepsFile([['a'], ['b', 'reproducible: false'], ['c', 'reproducible: true']], 'reproducible: true\n'), { file: FILE })
  assert.equal(p.reproducible, true)
  assert.deepEqual(p.steps.map((s) => s.reproducible), [true, false, true])
  const q = parsePipeline(stepsFile([['a'], ['b', 'reproducible: true']]), { file: FILE })
  assert.equal(q.reproducible, undefined)
  assert.deepEqual(q.steps.map((s) => s.reproducible), [undefined, true])
  rejects(stepsFile([['a', 'reproducible: "yes"']]), 'ERR_PIPELINE_WRONG_TYPE', 5, 19, /step "a" "reproducible" must be true or false/)
  rejects(stepsFile([['a']], 'reproducible: 1\n'), 'ERR_PIPELINE_WRONG_TYPE', 2, 15, /"reproducible" must be true or false/)
})

test('the layers below a step are bounded by the steps it builds on, not by the steps in the file', () => {
  const limits = { layers: 2 }
  // Wide: four branches on one step, each with one layer below it.
  const wide = stepsFile([['a'], ['b', 'use: [a]'], ['c', 'use: [a]'], ['d', 'use: [a]'], ['e', 'use: [a]']])
  assert.equal(parsePipeline(wide, { file: FILE, limits }).steps.length, 5)
  // A join of two branches has three below it: refused at its use.
  const join = rejects(`${wide}  - name: f\n    run: "true"\n    use: [b, c]\n`, 'ERR_PIPELINE_LIMIT', 19, 10,
    /step "f" builds on 3 steps \(those it uses and theirs\), and OverlayFS stacks at most 2 layers below a step/, limits)
  assert.equal((join as PipelineError & { limit: string }).limit, 'layers')
  // A chain of four: the fourth has three below it, refused at the step (it has no use to point at).
  rejects(stepsFile([['a'], ['b'], ['c'], ['d']]), 'ERR_PIPELINE_LIMIT', 9, 5, /step "d" builds on 3 steps/, limits)
  assert.equal(parsePipeline(stepsFile([['a'], ['b'], ['c'], ['d', 'use: [b]']]), { file: FILE, limits }).steps.length, 4)
})
