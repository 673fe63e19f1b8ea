import { test } from 'node:test'
import assert from 'node:assert/strict'
import { CID } from 'multiformats/cid'
import { DEFAULT_SCOPE, loadIdentity, openRecord, recordKey, signRecord } from '@strata/records'
import { tempDir } from '@strata/testing'
import type { RunnerEvent } from '../src/index.ts'
import { envProblem, MAX_ENV_BYTES, MAX_ENV_STRING } from '../src/strata-env.ts'
import { harness, pipelineIn, sideChannel, statuses } from './helpers.ts'

/** Shell that appends `n` variables NAME0..NAME<n-1> of `bytes` x's each to $STRATA_ENV. */
const bigVars = (name: string, n: number, bytes: number): string =>
  `v=$(head -c ${bytes} /dev/zero | tr '\\0' x); for i in $(seq 0 ${n - 1}); do echo "${name}$i=$v" >> "$STRATA_ENV"; done`

test('the environment bound: one NAME=value string of the kernel\'s MAX_ARG_STRLEN, 1 MiB in all', () => {
  assert.equal(MAX_ENV_STRING, 131072)
  assert.equal(envProblem({ A: 'x'.repeat(MAX_ENV_STRING - 3) }), undefined, 'A=… with its NUL is exactly the limit')
  assert.equal(envProblem({ A: 'x'.repeat(MAX_ENV_STRING - 2) })?.variable, 'A')
  const nine = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`V${i}`, 'y'.repeat(120_000)]))
  assert.equal(envProblem(nine)?.variable, 'V0')
  assert.match(envProblem(nine)!.reason, new RegExp(`over the ${MAX_ENV_BYTES}`))
  assert.equal(envProblem(Object.fromEntries(Object.entries(nine).slice(0, 8))), undefined)
})

test('a step whose $STRATA_ENV makes the environment too large for exec fails naming a variable; nothing of it is committed', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  // Five of 120 kB each fit; ten do not (over 1 MiB), though every one fits on its own.
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: half
    run: ${bigVars('A', 5, 120_000)}
  - name: more
    run: echo more >> ${side.dir}/ran; ${bigVars('B', 5, 120_000)}
`)
  for (const expected of [['half:ran', 'more:failed'], ['half:hit', 'more:failed']]) {
    h.events.length = 0
    await assert.rejects(h.runner.run(p, { onEvent: h.onEvent }), (err: Error & { code?: string, variable?: string }) => {
      assert.equal(err.code, 'ERR_STRATA_ENV')
      assert.match(err.variable ?? '', /^[AB]\d$/)
      assert.match(err.message, /step "more": \$STRATA_ENV: the environment would be \d+ bytes, over the 1048576 strata gives exec \(the largest variable: [AB]\d, 120003 bytes\)/)
      return true
    })
    assert.deepEqual(statuses(h.events), expected)
  }
  assert.deepEqual(side.lines(), ['more', 'more'], 'the failed step was a hit the second time')
  assert.equal((await h.store.listLayers()).length, 1)
})

test('a stored record whose env exec would refuse is not a hit: the step runs again', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: one
    run: echo ran >> ${side.dir}/ran; echo A=1 >> "$STRATA_ENV"
`)
  await h.runner.run(p, { onEvent: h.onEvent })
  const captured = h.events.find((e): e is Extract<RunnerEvent, { type: 'captured' }> => e.type === 'captured')!
  // The same signer, a record that verifies, an env value over the kernel's per-string limit.
  const me = await loadIdentity(h.dataDir)
  const key = CID.parse(captured.key)
  const where = recordKey(key, DEFAULT_SCOPE)
  const record = openRecord(key, (await h.store.getRecord(where))!, { trusts: (peer) => peer === me.peerId })
  await h.store.putRecord(where, signRecord({ ...record, env: [`A=${'x'.repeat(200_000)}`] }, me))
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(h.events.filter((e) => e.type === 'miss').map((e) => e.reason), ['invalid-record'])
  assert.deepEqual(side.lines(), ['ran', 'ran'])
})
