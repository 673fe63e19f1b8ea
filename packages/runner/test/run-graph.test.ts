import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import { tempDir } from '@strata/testing'
import { recordKey } from '@strata/records'
import type { RunnerEvent } from '../src/index.ts'
import { harness, pipelineIn, sideChannel, statuses } from './helpers.ts'

const status = (events: readonly RunnerEvent[]): Record<string, string> => Object.fromEntries(statuses(events).map((s) => s.split(':') as [string, string]))
const keyOf = (events: readonly RunnerEvent[], step: string): string => events.flatMap((e) => e.type === 'key' && e.step === step ? [e.key] : [])[0]!

/** base -> {left, right} -> join: each branch sees its own file of the checkout only. */
const diamond = (side: string, leftRun = 'cat /workspace/l.txt > /opt/left'): string => `base: host
steps:
  - name: base
    filter: []
    run: mkdir -p /opt && echo base > /opt/base && echo base >> ${side}/ran
  - name: left
    use: [base]
    filter: [l.txt]
    reproducible: true
    run: ${leftRun} && echo left >> ${side}/ran
  - name: right
    use: [base]
    filter: [r.txt]
    run: cat /workspace/r.txt > /opt/right && echo right >> ${side}/ran
  - name: join
    use: [left, right]
    filter: []
    run: cat /opt/base /opt/left /opt/right > /opt/joined && cp /opt/joined ${side}/joined && echo join >> ${side}/ran
`

test('a diamond: a changed branch re-runs the join, the other branch hits; a branch that makes the same layer again keeps the join\'s hit', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  writeFileSync(`${proj}/l.txt`, 'L1\n')
  writeFileSync(`${proj}/r.txt`, 'R1\n')
  let p = pipelineIn(proj, diamond(side.dir))
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines().sort(), ['base', 'join', 'left', 'right'])
  assert.equal(readFileSync(`${side.dir}/joined`, 'utf8'), 'base\nL1\nR1\n', 'the join sees both branches over the base')
  h.events.length = 0
  writeFileSync(`${proj}/r.txt`, 'R2\n')
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(status(h.events), { base: 'hit', left: 'hit', right: 'ran', join: 'ran' })

  // The left branch's command changes but writes the same file: only it runs; the join hits.
  h.events.length = 0
  const before = side.lines().length
  p = pipelineIn(proj, diamond(side.dir, 'cp /workspace/l.txt /opt/left'))
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines().slice(before), ['left'])
  assert.deepEqual(status(h.events), { base: 'hit', left: 'ran', right: 'hit', join: 'hit' })

  // The branch changes what it writes: it re-runs, and so does the join.
  writeFileSync(`${proj}/l.txt`, 'L2\n')
  const report = await h.runner.why(p, 'join')
  const join = report.steps.find((s) => s.name === 'join')!
  assert.equal(join.approximate, true)
  assert.ok(join.reasons.includes('left will run first: this assumes it makes the same layer as before'), join.reasons.join('; '))
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(status(h.events), { base: 'hit', left: 'ran', right: 'hit', join: 'ran' })
  assert.equal(readFileSync(`${side.dir}/joined`, 'utf8'), 'base\nL2\nR2\n')
  // Back to the first content: the left branch's old layer and the join's old record come back.
  writeFileSync(`${proj}/l.txt`, 'L1\n')
  const back = await h.runner.why(p, 'join')
  assert.deepEqual(back.steps.map((s) => [s.name, s.hit]), [['base', true], ['left', true], ['right', true], ['join', true]])
  assert.ok(back.steps.at(-1)!.reasons.includes('left re-ran and produced another layer'), back.steps.at(-1)!.reasons.join('; '))
})

test('the join is mounted on its parents in use order: the last listed wins a file both write', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const yml = (order: string): string => `base: host
steps:
  - { name: one, filter: [], run: "mkdir -p /opt && echo one > /opt/x && echo one > /opt/one" }
  - { name: two, use: [], filter: [], run: "mkdir -p /opt && echo two > /opt/x && echo two > /opt/two" }
  - { name: join, use: [${order}], filter: [], cache: false, run: "cat /opt/x /opt/one /opt/two | tr '\\\\n' ' ' > ${side.dir}/seen-${order.replace(', ', '-')}" }
`
  await h.runner.run(pipelineIn(proj, yml('one, two')))
  await h.runner.run(pipelineIn(proj, yml('two, one')))
  assert.equal(readFileSync(`${side.dir}/seen-one-two`, 'utf8'), 'two one two ')
  assert.equal(readFileSync(`${side.dir}/seen-two-one`, 'utf8'), 'one one two ')
})

test('independent steps run at once: two branches of sleep overlap', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const branch = (name: string): string => `  - { name: ${name}, use: [], filter: [], cache: false, run: "date +%s.%N >> ${side.dir}/${name}; sleep 1.5; date +%s.%N >> ${side.dir}/${name}" }\n`
  const p = pipelineIn(proj, `base: host\nsteps:\n${branch('a')}${branch('b')}`)
  const result = await h.runner.run(p, { jobs: 2, onEvent: h.onEvent })
  const [aStart, aEnd] = side.lines('a').map(Number)
  const [bStart, bEnd] = side.lines('b').map(Number)
  assert.ok(aStart! < bEnd! && bStart! < aEnd!, `the two steps overlapped: a ${aStart}-${aEnd}, b ${bStart}-${bEnd}`)
  assert.equal(result.steps.length, 2)
  assert.ok(result.stepsMs > result.durationMs, 'the steps add up to more than the run took')

  // With one job they take turns.
  await h.runner.run(p, { jobs: 1 })
  const a2 = side.lines('a').map(Number).slice(2)
  const b2 = side.lines('b').map(Number).slice(2)
  assert.ok(a2[1]! <= b2[0]! || b2[1]! <= a2[0]!, 'with --jobs 1 the steps did not overlap')
})

test('a failing branch cancels the other: nothing of it is committed, and steps above are skipped', async (t) => {
  const h = await harness(t, { killGraceMs: 500 })
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - { name: slow, use: [], filter: [], run: "echo started >> ${side.dir}/slow; sleep 30; echo done >> ${side.dir}/slow" }
  - { name: bad, use: [], filter: [], run: "while [ ! -s ${side.dir}/slow ]; do sleep 0.05; done; exit 3" }
  - { name: top, use: [slow, bad], filter: [], run: "echo top >> ${side.dir}/ran" }
`)
  await assert.rejects(h.runner.run(p, { onEvent: h.onEvent }), { code: 'ERR_STEP_FAILED', exitCode: 3 })
  assert.deepEqual(side.lines('slow'), ['started'], 'the slow branch was stopped before it finished')
  assert.deepEqual(side.lines(), [], 'the step above never ran')
  const failed = h.events.filter((e) => e.type === 'failed').map((e) => `${e.step}:${e.type === 'failed' ? e.reason : ''}`).sort()
  assert.deepEqual(failed, ['bad:exit', 'slow:cancel'])
  assert.deepEqual(h.events.filter((e) => e.type === 'skipped').map((e) => e.step), ['top'])
  assert.equal(h.events.filter((e) => e.type === 'captured').length, 0)
  assert.equal(await h.store.getRecord(recordKey(keyOf(h.events, 'slow'), 'default')), undefined, 'no record of the cancelled step')
  assert.deepEqual(await h.store.listLayers(), [])
})

test('keepGoing: a failure leaves the steps that do not depend on it running to the end', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - { name: bad, use: [], filter: [], run: "exit 4" }
  - { name: good, use: [], filter: [], run: "sleep 0.5; echo good >> ${side.dir}/ran" }
  - { name: above-bad, use: [bad], filter: [], run: "echo above >> ${side.dir}/ran" }
`)
  await assert.rejects(h.runner.run(p, { keepGoing: true, onEvent: h.onEvent }), { code: 'ERR_STEP_FAILED', exitCode: 4 })
  assert.deepEqual(side.lines(), ['good'])
  assert.deepEqual(status(h.events), { bad: 'failed', good: 'ran' })
  assert.deepEqual(h.events.filter((e) => e.type === 'skipped').map((e) => e.type === 'skipped' ? `${e.step}:${e.reason}` : ''), ['above-bad:parent-failed'])
})

test('reproducible: SOURCE_DATE_EPOCH is set and captured mtimes are clamped, so running the step again makes the same layer', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  const yml = (reproducible: boolean): string => `base: host
steps:
  - name: build
    filter: []
    reproducible: ${reproducible}
    run: mkdir -p /opt/out && echo "$SOURCE_DATE_EPOCH" > /opt/out/epoch && date +%N > /dev/null
`
  const layers = async (reproducible: boolean): Promise<string[]> => {
    const p = pipelineIn(proj, yml(reproducible))
    const out: string[] = []
    for (let i = 0; i < 2; i++) out.push((await h.runner.run(p, { noCache: true })).steps[0]!.layer)
    return out
  }
  const plain = await layers(false)
  assert.notEqual(plain[0], plain[1], 'without it, the mtimes of the run make another layer each time')
  const repro = await layers(true)
  assert.equal(repro[0], repro[1])
  const layer = await h.store.getLayer(CID.parse(repro[0]!))
  assert.equal(readFileSync(`${layer!.path}/opt/out/epoch`, 'utf8'), '315532800\n')
  assert.equal(statSync(`${layer!.path}/opt/out/epoch`).mtimeMs, 315532800 * 1000)
})
