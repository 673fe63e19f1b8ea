// One build per key (claim.ts): a step that misses while another builds its key waits
// for that build and hits, or builds it itself once that build failed, died or took too long.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync, writeFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { CID } from 'multiformats/cid'
import { recordKey } from '@strata/records'
import { tempDir } from '@strata/testing'
import type { FleetClaim, RemoteCache } from '../src/context.ts'
import type { RunnerEvent } from '../src/index.ts'
import { harness, pipelineIn, sideChannel } from './helpers.ts'

/** A step that says it started, then waits for `go` in the side channel. */
function gated (side: { dir: string }, extra = ''): string {
  return `base: host
steps:
  - name: build
    run: |
      echo ran >> ${side.dir}/ran
      while [ ! -e ${side.dir}/go ]; do sleep 0.05; done
      echo x > /opt/strata-claim-x
${extra}`
}

/** Polls `cond`; a run that never gets there fails the test instead of hanging it. */
async function until (cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000
  while (!cond()) {
    if (Date.now() > deadline) assert.fail('gave up waiting')
    await delay(20)
  }
}

const types = (events: readonly RunnerEvent[]): string[] => events.filter((e) => e.type !== 'capture-progress').map((e) => e.type)

test('two runs of one runner with the same cold step: one builds, the other waits for it and hits', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), gated(side))
  const a: RunnerEvent[] = []
  const b: RunnerEvent[] = []
  const first = h.runner.run(p, { onEvent: (e) => a.push(e) })
  await until(() => side.lines().length > 0)
  const second = h.runner.run(p, { onEvent: (e) => b.push(e) })
  await until(() => b.some((e) => e.type === 'wait'))
  writeFileSync(`${side.dir}/go`, '')
  const [ra, rb] = await Promise.all([first, second])
  assert.deepEqual(side.lines(), ['ran'])
  assert.equal(ra.steps[0]!.status, 'ran')
  assert.equal(rb.steps[0]!.status, 'hit')
  assert.equal(rb.steps[0]!.layer, ra.steps[0]!.layer)
  const key = ra.steps[0]!.key
  assert.deepEqual(b.find((e) => e.type === 'wait'), { type: 'wait', step: 'build', key, holder: 'build', where: 'process' })
  // It waited and hit: no miss to count.
  assert.deepEqual(types(b), ['start', 'key', 'wait', 'hit'])
  assert.deepEqual(readdirSync(`${h.dataDir}/runner/claims`), [])
})

test('another runner on this machine building the key: the step waits on its claim file, names its pid and hits', async (t) => {
  const h = await harness(t)
  const other = await h.reopen()
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), gated(side))
  const b: RunnerEvent[] = []
  const first = other.run(p)
  await until(() => side.lines().length > 0)
  const second = h.runner.run(p, { onEvent: (e) => b.push(e) })
  await until(() => b.some((e) => e.type === 'wait'))
  writeFileSync(`${side.dir}/go`, '')
  const [ra, rb] = await Promise.all([first, second])
  assert.deepEqual(side.lines(), ['ran'])
  assert.equal(rb.steps[0]!.status, 'hit')
  assert.deepEqual(b.find((e) => e.type === 'wait'), { type: 'wait', step: 'build', key: ra.steps[0]!.key, holder: String(process.pid), where: 'local' })
  assert.deepEqual(readdirSync(`${h.dataDir}/runner/claims`), [])
})

test('a failing build releases its claim: the waiting run builds the step itself', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  // The first to run it fails once it is let go; the next succeeds.
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: build
    run: |
      echo ran >> ${side.dir}/ran
      if [ "$(wc -l < ${side.dir}/ran)" = 1 ]; then
        while [ ! -e ${side.dir}/go ]; do sleep 0.05; done
        exit 3
      fi
      echo x > /opt/strata-claim-x
`)
  const b: RunnerEvent[] = []
  const first = h.runner.run(p)
  await until(() => side.lines().length > 0)
  const second = h.runner.run(p, { onEvent: (e) => b.push(e) })
  await until(() => b.some((e) => e.type === 'wait'))
  writeFileSync(`${side.dir}/go`, '')
  await assert.rejects(first, { code: 'ERR_STEP_FAILED' })
  const rb = await second
  assert.equal(rb.steps[0]!.status, 'ran')
  assert.deepEqual(side.lines(), ['ran', 'ran'])
  assert.deepEqual(types(b), ['start', 'key', 'wait', 'miss', 'ran', 'captured'])
})

test('claimWaitMs bounds the wait: past it the step runs beside the other build', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), `base: host
steps:
  - name: build
    run: |
      echo ran >> ${side.dir}/ran
      if [ "$(wc -l < ${side.dir}/ran)" = 1 ]; then
        while [ ! -e ${side.dir}/go ]; do sleep 0.05; done
      fi
      echo x > /opt/strata-claim-x
`)
  const b: RunnerEvent[] = []
  const first = h.runner.run(p)
  await until(() => side.lines().length > 0)
  // The first build is still held back when the second run ends.
  const rb = await h.runner.run(p, { claimWaitMs: 200, onEvent: (e) => b.push(e) })
  assert.equal(rb.steps[0]!.status, 'ran')
  assert.deepEqual(types(b), ['start', 'key', 'wait', 'miss', 'ran', 'captured'])
  writeFileSync(`${side.dir}/go`, '')
  assert.equal((await first).steps[0]!.status, 'ran')
})

test('a run cancelled while it waits for another build ends as cancelled, and the build goes on', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), gated(side))
  const b: RunnerEvent[] = []
  const first = h.runner.run(p)
  await until(() => side.lines().length > 0)
  const cancel = new AbortController()
  const second = h.runner.run(p, { signal: cancel.signal, onEvent: (e) => b.push(e) })
  await until(() => b.some((e) => e.type === 'wait'))
  cancel.abort()
  await assert.rejects(second, { code: 'ERR_STEP_CANCELLED' })
  assert.deepEqual(b.filter((e) => e.type === 'failed').map((e) => e.type === 'failed' && e.reason), ['cancel'])
  writeFileSync(`${side.dir}/go`, '')
  assert.equal((await first).steps[0]!.status, 'ran')
  assert.deepEqual(side.lines(), ['ran'])
})

test('a claim file no live process holds is removed when a runner starts; a held one stays', async (t) => {
  const h = await harness(t)
  const dir = `${h.dataDir}/runner/claims`
  writeFileSync(`${dir}/bafystale`, '4242\n')
  // In its own process group: flock's child (sleep) holds the lock too, and goes with the group.
  const holder = spawn('flock', [`${dir}/bafyheld`, '-c', 'echo locked; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'], detached: true })
  const exited = once(holder, 'exit')
  const stop = async (): Promise<void> => {
    try {
      process.kill(-holder.pid!, 'SIGKILL')
    } catch {
      // gone already
    }
    await exited
    // flock's exit is seen before its child's: the lock goes with the last of the group.
    for (;;) {
      try {
        process.kill(-holder.pid!, 0)
      } catch {
        return
      }
      await delay(10)
    }
  }
  t.after(stop)
  await once(holder.stdout, 'data')
  await h.reopen()
  assert.deepEqual(readdirSync(dir), ['bafyheld'])
  await stop()
  await h.reopen()
  assert.deepEqual(readdirSync(dir), [])
})

/** The fleet as a test sets it up: each claim() answers with the next of `answers`; what was released, in order. */
function fleet (answers: Array<() => FleetClaim | Promise<FleetClaim>>, resolve?: RemoteCache['resolve']): { remote: RemoteCache, claims: string[], released: string[] } {
  const claims: string[] = []
  const released: string[] = []
  const remote: RemoteCache = {
    resolve: resolve ?? (async () => { throw new Error('no provider') }),
    trusts: () => true,
    claim: async (key, opts) => {
      claims.push(`${key} ${opts.scope}`)
      const next = answers.shift()
      if (next === undefined) throw new Error('no more answers')
      return await next()
    }
  }
  return { remote, claims, released }
}

test('the fleet grants the claim: the step runs and releases it as built, once its record is stored', async (t) => {
  const side = sideChannel(t)
  const ref: { h?: Awaited<ReturnType<typeof harness>> } = {}
  const f = fleet([() => ({
    status: 'granted',
    release: async (outcome) => {
      const key = ref.h!.events.find((e) => e.type === 'key')!.key
      f.released.push(`${outcome} ${await ref.h!.store.getRecord(recordKey(key, 'default')) !== undefined ? 'recorded' : 'not recorded'}`)
    }
  })])
  const h = ref.h = await harness(t, { remote: f.remote })
  const p = pipelineIn(tempDir(t), `base: host\nsteps:\n  - name: build\n    run: echo ran >> ${side.dir}/ran\n`)
  const r = await h.runner.run(p, { onEvent: h.onEvent })
  assert.equal(r.steps[0]!.status, 'ran')
  assert.deepEqual(f.claims, [`${r.steps[0]!.key} default`])
  assert.deepEqual(f.released, ['built recorded'])
  assert.deepEqual(side.lines(), ['ran'])
})

test('a step that fails releases its fleet claim as failed', async (t) => {
  const f = fleet([() => ({ status: 'granted', release: async (outcome) => { f.released.push(outcome) } })])
  const h = await harness(t, { remote: f.remote })
  const p = pipelineIn(tempDir(t), 'base: host\nsteps:\n  - name: build\n    run: exit 4\n')
  await assert.rejects(h.runner.run(p), { code: 'ERR_STEP_FAILED' })
  assert.deepEqual(f.released, ['failed'])
})

test('a peer holds the claim: the step waits for its record and hits from the fleet instead of running', async (t) => {
  const side = sideChannel(t)
  const producer = await harness(t)
  const p = pipelineIn(tempDir(t), `base: host\nsteps:\n  - name: build\n    run: echo ran >> ${side.dir}/ran && echo x > /opt/strata-claim-x\n`)
  const built: { key?: string, layer?: string } = {}
  const recorded = Promise.withResolvers<'record'>()
  const ref: { h?: Awaited<ReturnType<typeof harness>> } = {}
  const f = fleet([() => ({ status: 'held', holder: '12D3KooWPeerBuildingIt', settled: async () => await recorded.promise })], async (key) => {
    if (built.key !== key) throw new Error('no provider')
    // What the daemon does: the layer's blocks from the peer, then its record.
    await ref.h!.store.restore(CID.parse(built.layer!), producer.store)
    await ref.h!.store.putRecord(recordKey(key, 'default'), (await producer.store.getRecord(recordKey(key, 'default')))!)
    return { providers: 1, bytes: 2, durationMs: 1 }
  })
  const h = ref.h = await harness(t, { remote: f.remote })
  const running = h.runner.run(p, { onEvent: h.onEvent })
  await until(() => h.events.some((e) => e.type === 'wait'))
  const made = await producer.runner.run(p)
  built.key = made.steps[0]!.key
  built.layer = made.steps[0]!.layer
  recorded.resolve('record')
  const r = await running
  assert.equal(r.steps[0]!.status, 'hit')
  assert.equal(r.steps[0]!.layer, built.layer)
  assert.deepEqual(side.lines(), ['ran'], 'the step ran on the producer only')
  assert.deepEqual(h.events.find((e) => e.type === 'wait'), { type: 'wait', step: 'build', key: built.key, holder: '12D3KooWPeerBuildingIt', where: 'peer' })
  assert.equal(h.events.find((e) => e.type === 'hit')?.source, 'peer')
  assert.deepEqual(types(h.events), ['start', 'key', 'wait', 'hit'])
})

test('a peer\'s claim that expires: the step claims again and builds it', async (t) => {
  const f = fleet([
    () => ({ status: 'held', holder: '12D3KooWGone', settled: async () => 'expired' }),
    () => ({ status: 'granted', release: async (outcome) => { f.released.push(outcome) } })
  ])
  const h = await harness(t, { remote: f.remote })
  const side = sideChannel(t)
  const p = pipelineIn(tempDir(t), `base: host\nsteps:\n  - name: build\n    run: echo ran >> ${side.dir}/ran\n`)
  const r = await h.runner.run(p, { onEvent: h.onEvent })
  assert.equal(r.steps[0]!.status, 'ran')
  assert.equal(f.claims.length, 2)
  assert.deepEqual(f.released, ['built'])
  assert.deepEqual(types(h.events), ['start', 'key', 'wait', 'miss', 'ran', 'captured'])
})

test('the wait for a peer is bounded by claimWaitMs and by the step\'s timeout; past it the step runs', async (t) => {
  const bounds: number[] = []
  const held = (): FleetClaim => ({ status: 'held', holder: '12D3KooWSlow', settled: async ({ timeoutMs }) => { bounds.push(timeoutMs); return 'timeout' } })
  const f = fleet([held, held])
  const h = await harness(t, { remote: f.remote })
  const side = sideChannel(t)
  const dir = tempDir(t)
  const r1 = await h.runner.run(pipelineIn(`${dir}/a`, `base: host\nsteps:\n  - name: build\n    run: echo a >> ${side.dir}/ran\n`), { claimWaitMs: 5000 })
  const r2 = await h.runner.run(pipelineIn(`${dir}/b`, `base: host\nsteps:\n  - name: build\n    timeout: 2s\n    run: echo b >> ${side.dir}/ran\n`), { claimWaitMs: 60_000 })
  assert.deepEqual([r1.steps[0]!.status, r2.steps[0]!.status], ['ran', 'ran'])
  assert.deepEqual(side.lines(), ['a', 'b'])
  assert.ok(bounds[0]! > 0 && bounds[0]! <= 5000, `${bounds[0]}`)
  assert.ok(bounds[1]! > 0 && bounds[1]! <= 2000, `${bounds[1]}`)
})

test('a fleet that cannot claim does not fail the build; uncached steps and noCache claim nothing', async (t) => {
  const f = fleet([() => { throw new Error('daemon gone') }])
  const h = await harness(t, { remote: f.remote })
  const side = sideChannel(t)
  const dir = tempDir(t)
  const r = await h.runner.run(pipelineIn(`${dir}/a`, `base: host\nsteps:\n  - name: build\n    run: echo a >> ${side.dir}/ran\n`))
  assert.equal(r.steps[0]!.status, 'ran')
  assert.equal(f.claims.length, 1)
  await h.runner.run(pipelineIn(`${dir}/b`, `base: host\nsteps:\n  - name: build\n    cache: false\n    run: echo b >> ${side.dir}/ran\n`))
  await h.runner.run(pipelineIn(`${dir}/c`, `base: host\nsteps:\n  - name: build\n    run: echo c >> ${side.dir}/ran\n`), { noCache: true })
  assert.equal(f.claims.length, 1)
  assert.deepEqual(side.lines(), ['a', 'b', 'c'])
})

test('a step waiting for another build gives up its job slot: with one job, an independent step runs meanwhile', async (t) => {
  const h = await harness(t)
  const other = await h.reopen()
  const side = sideChannel(t)
  const build = `  - name: build
    filter: []
    run: |
      echo ran >> ${side.dir}/ran
      while [ ! -e ${side.dir}/go ]; do sleep 0.05; done
      echo x > /opt/strata-claim-x
`
  const first = other.run(pipelineIn(tempDir(t), `base: host\nsteps:\n${build}`))
  await until(() => side.lines().length > 0)
  const b: RunnerEvent[] = []
  const second = h.runner.run(pipelineIn(tempDir(t), `base: host\nsteps:\n${build}  - { name: lint, use: [], filter: [], run: "echo lint >> ${side.dir}/lint" }\n`), { jobs: 1, onEvent: (e) => b.push(e) })
  // The waiting step must not keep lint from its one slot: if it did, this would never come.
  try {
    await until(() => side.lines('lint').length > 0)
  } finally {
    writeFileSync(`${side.dir}/go`, '')
  }
  const [, rb] = await Promise.all([first, second])
  assert.deepEqual(side.lines(), ['ran'])
  assert.deepEqual(rb.steps.map((s) => `${s.name}:${s.status}`), ['build:hit', 'lint:ran'])
  assert.ok(b.findIndex((e) => e.type === 'wait') < b.findIndex((e) => e.type === 'start' && e.step === 'lint'))
})
