import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { CID } from 'multiformats/cid'
import { createRunner, parsePipeline } from '@strata/runner'
import type { RunnerEvent } from '@strata/runner'
import { connectDaemon } from '@strata/daemon'
import type { Daemon, DaemonClient } from '@strata/daemon'
import { digestTree, memoryLogger, Sink } from '@strata/testing'
import { connect, startDaemon } from '../packages/daemon/test/helpers.ts'

async function clientOf (t: TestContext, d: Daemon): Promise<DaemonClient> {
  const c = await connectDaemon(d.dataDir)
  assert.ok(c !== undefined, 'the daemon answers on its socket')
  t.after(async () => { await c.close() })
  return c
}

/** A host dir every step of runOn() shares: what a step writes there is proof that it ran. */
const SIDE_ROOT = '/var/tmp/strata-daemon-test-side'
mkdirSync(SIDE_ROOT, { recursive: true })

function sideChannel (t: TestContext): { dir: string, ran: () => string[] } {
  const dir = mkdtempSync(`${SIDE_ROOT}/s-`)
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return {
    dir,
    ran: () => {
      try {
        return readFileSync(`${dir}/ran`, 'utf8').split('\n').filter((l) => l !== '')
      } catch {
        return []
      }
    }
  }
}

async function runOn (client: DaemonClient, yml: string, logger = memoryLogger().logger): Promise<RunnerEvent[]> {
  const events: RunnerEvent[] = []
  const out = new Sink()
  const runner = await createRunner({ store: client, remote: client, logger, output: { stdout: out, stderr: out, prefix: true }, shared: [SIDE_ROOT] })
  await runner.run(parsePipeline(yml, { file: '/var/tmp/strata.yml' }), { onEvent: (e) => events.push(e) })
  return events
}

const outcome = (events: RunnerEvent[]): string[] => events
  .filter((e) => e.type === 'hit' || e.type === 'captured')
  .map((e) => `${e.step}:${e.type === 'hit' ? `hit-${e.source}` : 'ran'}`)

test('a pipeline run on A hits from peers on B, with the same layers', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const side = sideChannel(t)
  const tag = `fleet-${process.pid}-${Date.now()}`
  const yml = `base: host
salt: ${tag}
steps:
  - name: write
    run: |
      echo write >> ${side.dir}/ran
      mkdir -p /opt/${tag} && head -c 700000 /dev/urandom > /opt/${tag}/blob && echo hi > /opt/${tag}/hi
  - name: env
    run: |
      echo env >> ${side.dir}/ran
      echo "GREETING=from-a" >> "$STRATA_ENV"
      cp /opt/${tag}/hi /opt/${tag}/hi2
`
  const onA = await runOn(await clientOf(t, a), yml)
  assert.deepEqual(outcome(onA), ['write:ran', 'env:ran'])
  const onB = await runOn(await clientOf(t, b), yml)
  assert.deepEqual(outcome(onB), ['write:hit-peer', 'env:hit-peer'])
  assert.deepEqual(side.ran(), ['write', 'env'], 'nothing ran on B')
  const hits = onB.filter((e) => e.type === 'hit')
  for (const h of hits) {
    assert.ok(h.type === 'hit' && h.source === 'peer' && h.providers === 1)
    const la = await a.store.getLayer(CID.parse(h.layer))
    const lb = await b.store.getLayer(la!.root)
    assert.ok(lb !== undefined)
    assert.deepEqual(digestTree(lb.path), digestTree(la!.path))
  }
  assert.ok(b.exchange.counters.bytesFromPeers > 700_000)
  // A third run on B is all local.
  assert.deepEqual(outcome(await runOn(await clientOf(t, b), yml)), ['write:hit-local', 'env:hit-local'])
})

test('with no provider left, the step runs and the run succeeds', async (t) => {
  const a = await startDaemon(t)
  const b = await startDaemon(t)
  await connect([a, b])
  const side = sideChannel(t)
  const tag = `gone-${process.pid}-${Date.now()}`
  const yml = `base: host
salt: ${tag}
steps:
  - name: only
    run: |
      echo only >> ${side.dir}/ran
      mkdir -p /opt/${tag} && echo x > /opt/${tag}/x
`
  assert.deepEqual(outcome(await runOn(await clientOf(t, a), yml)), ['only:ran'])
  // A loses the layer but keeps the record: B finds the record, nobody can give the blocks.
  for (const l of await a.store.listLayers()) await a.store.removeLayer(l.root)
  const { logger, lines } = memoryLogger()
  assert.deepEqual(outcome(await runOn(await clientOf(t, b), yml, logger)), ['only:ran'])
  assert.deepEqual(side.ran(), ['only', 'only'])
  assert.ok(lines.some((l) => l.event === 'fleet-miss'))
})
