import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { CID } from 'multiformats/cid'
import { openStore } from '@strata/store'
import { tempDir, writeTree } from '@strata/testing'
import { createRunner, shellQuote, StepCancelledError, StepFailedError, StepTimeoutError } from '../src/index.ts'
import type { RunnerEvent } from '../src/index.ts'
import { harness, mountsMentioning, pipelineIn, processesMatching, sideChannel, statuses } from './helpers.ts'

test('a host pipeline runs, captures, and on the second run hits every step without running anything', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = `${tempDir(t)}/proj`
  writeTree(proj, { 'victim.txt': 'base file', olddir: { a: '1', b: '2' }, 'a.txt': 'input v1', 'b.txt': 'undeclared v1' })
  const yml = `base: host
steps:
  - name: create
    filter: [victim.txt, olddir]
    run: |
      echo create >> ${side.dir}/ran
      echo visible-output
      mkdir -p /opt/strata-test
      echo hello > /opt/strata-test/hello.txt
      rm victim.txt
      rm -rf olddir && mkdir olddir && echo new > olddir/c
  - name: modes
    filter: [victim.txt]
    run: |
      echo modes >> ${side.dir}/ran
      chmod 0700 /opt/strata-test
      chmod 0640 /opt/strata-test/hello.txt
      chown 1234:2345 /opt/strata-test/hello.txt
      ln -s hello.txt /opt/strata-test/link
      echo "GREETING=hi there" >> "$STRATA_ENV"
  - name: uses-input
    filter: [a.txt]
    run: |
      echo uses-input >> ${side.dir}/ran
      cp a.txt /opt/strata-test/a-copy
  - name: reads-env
    env: [MISSING_VAR]
    filter: [a.txt]
    run: |
      echo reads-env >> ${side.dir}/ran
      echo "$GREETING" > /opt/strata-test/greeting
  - name: nothing
    run: echo nothing >> ${side.dir}/ran
`
  const p = pipelineIn(proj, yml)
  const all = ['create', 'modes', 'uses-input', 'reads-env', 'nothing']

  // What the last step leaves, seen from a step on top of it (and copied out through /dev).
  const snapshot = async (n: number, parent: string): Promise<string> => {
    await h.runner.exec({
      name: 'check',
      parent,
      cache: false,
      workspace: { dir: proj, path: '/workspace' },
      run: `find /opt/strata-test /workspace -printf '%p %y %m %U:%G %s %l\\n' | sort > ${side.dir}/fs-${n}
            find /opt/strata-test /workspace -type f -exec sha256sum {} + | sort >> ${side.dir}/fs-${n}`
    })
    return readFileSync(`${side.dir}/fs-${n}`, 'utf8')
  }

  const first = await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), all)
  assert.deepEqual(statuses(h.events), all.map((s) => `${s}:ran`))
  assert.deepEqual(first.env, { GREETING: 'hi there' })
  assert.match(h.out.text, /^create \| visible-output$/m)
  const fs1 = await snapshot(1, first.steps.at(-1)!.key)

  assert.match(fs1, new RegExp(`^/opt/strata-test d 700 0:0 `, 'm'))
  assert.match(fs1, /^\/opt\/strata-test\/hello\.txt f 640 1234:2345 6 $/m)
  assert.match(fs1, /^\/opt\/strata-test\/link l 777 0:0 \d+ hello\.txt$/m)
  assert.match(fs1, /^\/opt\/strata-test\/a-copy f /m)
  assert.ok(!fs1.includes('/workspace/victim.txt'), 'the deleted checkout file is gone (whiteout)')
  assert.ok(fs1.includes('/workspace/olddir/c f'))
  assert.ok(!fs1.includes('/workspace/olddir/a'), 'the replaced checkout dir shows none of its old entries (opaque dir)')
  assert.ok(fs1.includes('/workspace/b.txt f'), 'a step sees the whole checkout unless a filter narrows it')
  const hiThere = createHash('sha256').update('hi there\n').digest('hex')
  assert.ok(fs1.includes(`${hiThere}  /opt/strata-test/greeting`), 'the later step read the env the earlier one set')
  // The host itself is untouched.
  assert.ok(existsSync(`${proj}/victim.txt`) && existsSync(`${proj}/olddir/a`) && !existsSync('/opt/strata-test'))

  h.events.length = 0
  const second = await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), all, 'no command ran the second time')
  assert.deepEqual(statuses(h.events), all.map((s) => `${s}:hit`))
  assert.deepEqual(second.steps.map((s) => s.key), first.steps.map((s) => s.key))
  assert.deepEqual(second.env, { GREETING: 'hi there' })
  assert.equal(await snapshot(2, second.steps.at(-1)!.key), fs1, 'the restored filesystem is identical')

  // A declared input changes: that step and the ones above it run again.
  writeFileSync(`${proj}/a.txt`, 'input v2')
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), [...all, 'uses-input', 'reads-env', 'nothing'])
  assert.deepEqual(statuses(h.events), ['create:hit', 'modes:hit', 'uses-input:ran', 'reads-env:ran', 'nothing:ran'])

  // A file outside the filters changes: the filtered steps hit; the last one keys the whole workspace.
  writeFileSync(`${proj}/b.txt`, 'undeclared v2')
  h.events.length = 0
  await h.runner.run(p, { onEvent: h.onEvent })
  assert.deepEqual(side.lines(), [...all, 'uses-input', 'reads-env', 'nothing', 'nothing'])
  assert.deepEqual(statuses(h.events), ['create:hit', 'modes:hit', 'uses-input:hit', 'reads-env:hit', 'nothing:ran'])

  // why: the input's content is the cause; the step above depends on the layer that step will make.
  writeFileSync(`${proj}/a.txt`, 'input v3')
  const why = await h.runner.why(p, 'reads-env')
  assert.deepEqual(why.steps.map((s) => s.name), ['create', 'modes', 'uses-input', 'reads-env'])
  assert.deepEqual(why.steps.map((s) => s.hit), [true, true, false, false])
  assert.deepEqual(why.steps[2]!.changes, [{ field: 'workspace-file', path: 'a.txt', change: 'content' }])
  assert.deepEqual(why.steps[2]!.reasons, ['workspace file a.txt changed content'])
  assert.deepEqual(why.steps[3]!.reasons, ['workspace file a.txt changed content', 'uses-input will run first: this assumes it makes the same layer as before'])
  assert.equal(why.steps[3]!.approximate, true)
  assert.equal(why.steps[0]!.changes.length, 0)
})

test('a failing step commits nothing and stops the run with its exit code', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: ok
    run: echo ok >> ${side.dir}/ran; echo a > /opt/ok
  - name: bad
    run: echo bad >> ${side.dir}/ran; echo partial > /opt/partial; exit 3
  - name: never
    run: echo never >> ${side.dir}/ran
`)
  await assert.rejects(h.runner.run(p, { onEvent: h.onEvent }), (err: StepFailedError) => {
    assert.ok(err instanceof StepFailedError)
    assert.equal(err.code, 'ERR_STEP_FAILED')
    assert.equal(err.exitCode, 3)
    assert.equal(err.step, 'bad')
    return true
  })
  assert.deepEqual(side.lines(), ['ok', 'bad'])
  const failed = h.events.find((e) => e.type === 'failed') as Extract<RunnerEvent, { type: 'failed' }>
  assert.equal(failed.exitCode, 3)
  assert.equal(failed.reason, 'exit')
  assert.equal((await h.store.listLayers()).length, 1, 'only the successful step made a layer')
  assert.equal(await h.store.getRecord(`runner/record/${failed.key!}/default`), undefined)
  assert.deepEqual(readdirSync(`${h.dataDir}/runner/run`), [], 'no scratch dir is left')

  h.events.length = 0
  await assert.rejects(h.runner.run(p, { onEvent: h.onEvent }), { code: 'ERR_STEP_FAILED' })
  assert.deepEqual(statuses(h.events), ['ok:hit', 'bad:failed'])
  assert.deepEqual(side.lines(), ['ok', 'bad', 'bad'])
})

test('a cancelled step leaves no process, no mount, no layer and no scratch dir', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: slow
    run: echo started >> ${side.dir}/ran; touch /opt/half-made; sleep 97.531; echo done >> ${side.dir}/ran
`)
  const ac = new AbortController()
  let mountsWhileRunning = 0
  const poll = setInterval(() => {
    if (ac.signal.aborted || !side.lines().includes('started')) return
    mountsWhileRunning = mountsMentioning(h.dataDir).length
    ac.abort(new Error('SIGINT'))
  }, 20)
  t.after(() => clearInterval(poll))
  const started = Date.now()
  await assert.rejects(h.runner.run(p, { signal: ac.signal, onEvent: h.onEvent }), (err: Error) => err instanceof StepCancelledError && (err as StepCancelledError).exitCode === 130)
  assert.ok(Date.now() - started < 10_000)
  assert.deepEqual(side.lines(), ['started'])
  assert.deepEqual(processesMatching('sleep 97.531'), [])
  // Seen from outside, the step's root (its source) and the bind of $STRATA_ENV name the run dir; the rest sit in that root.
  assert.ok(mountsWhileRunning >= 2, `the step's mounts were seen while it ran (${mountsWhileRunning})`)
  assert.deepEqual(mountsMentioning(h.dataDir), [], 'no mount of the step is left in any namespace')
  assert.deepEqual(await h.store.listLayers(), [])
  assert.deepEqual(readdirSync(`${h.dataDir}/runner/run`), [])
  assert.deepEqual(statuses(h.events), ['slow:failed'])
})

test('a timed-out step that ignores SIGTERM is killed after the grace period', async (t) => {
  const h = await harness(t, { killGraceMs: 300 })
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: stubborn
    timeout: 1s
    run: |
      trap '' TERM
      echo started >> ${side.dir}/ran
      sleep 97.532 &
      sleep 97.533
`)
  const started = Date.now()
  await assert.rejects(h.runner.run(p), (err: Error) => err instanceof StepTimeoutError && err.code === 'ERR_STEP_TIMEOUT')
  const took = Date.now() - started
  assert.ok(took >= 1000 && took < 6000, `took ${took}ms`)
  assert.deepEqual(side.lines(), ['started'])
  assert.deepEqual(processesMatching('sleep 97.53'), [], 'background and foreground processes are gone')
  assert.deepEqual(mountsMentioning(h.dataDir), [])
  assert.deepEqual(await h.store.listLayers(), [])
})

test('exec chains single steps by key and hits on the second call', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const a = await h.runner.exec({ name: 'a', run: `echo a >> ${side.dir}/ran; echo A > /opt/a; echo X=1 >> $STRATA_ENV` })
  assert.equal(a.status, 'ran')
  const b = await h.runner.exec({ name: 'b', parent: a.key, run: `echo b >> ${side.dir}/ran; test "$(cat /opt/a)" = A; test "$X" = 1; echo B > /opt/b` })
  assert.equal(b.status, 'ran')
  const b2 = await h.runner.exec({ name: 'b', parent: a.key, run: `echo b >> ${side.dir}/ran; test "$(cat /opt/a)" = A; test "$X" = 1; echo B > /opt/b` })
  assert.equal(b2.status, 'hit')
  assert.equal(b2.key, b.key)
  assert.deepEqual(side.lines(), ['a', 'b'])
  CID.parse(b.key)

  await assert.rejects(h.runner.exec({ name: 'c', parent: 'bafyreigcmak4ndasecjyghkogh3rsnwb7sokiohsyu4xfh6eczx234qegm', run: 'true' }), { code: 'ERR_PARENT_NOT_FOUND' })
  await assert.rejects(h.runner.exec({ name: 'c', parent: a.key, baseId: 'other-image', run: 'true' }), { code: 'ERR_BASE_MISMATCH' })
  await assert.rejects(h.runner.exec({ name: 'bad name', run: 'true' }), TypeError)
})

test('bad $STRATA_ENV lines fail the step and commit nothing', async (t) => {
  const h = await harness(t)
  await assert.rejects(h.runner.exec({ name: 'env', run: 'echo "not a line" >> $STRATA_ENV' }), { code: 'ERR_STRATA_ENV' })
  await assert.rejects(h.runner.exec({ name: 'env2', run: 'echo "STRATA_ENV=/x" >> $STRATA_ENV' }), { code: 'ERR_STRATA_ENV' })
  assert.deepEqual(await h.store.listLayers(), [])
})

test('declared env enters the key; values come from the caller or the file', async (t) => {
  const h = await harness(t, { env: { TOKEN: 'one' } })
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: e
    env: [TOKEN]
    run: echo "$TOKEN" >> ${side.dir}/ran
`)
  await h.runner.run(p)
  await h.runner.run(p)
  const other = await h.reopen({ env: { TOKEN: 'two' } })
  await other.run(p)
  assert.deepEqual(side.lines(), ['one', 'two'])
  const why = await other.why(p, 'e')
  assert.equal(why.steps[0]!.hit, true)
  const back = await h.reopen({ env: { TOKEN: 'three' } })
  const why2 = await back.why(p, 'e')
  assert.deepEqual(why2.steps[0]!.changes, [{ field: 'env', name: 'TOKEN', change: 'value' }])
  // The secret itself is nowhere in the stored descriptor.
  const desc = await h.store.getRecord(`runner/desc/${why2.steps[0]!.previousKey!}`)
  assert.ok(desc !== undefined && !Buffer.from(desc).includes('two'))
})

test('records from an untrusted producer are a miss; trusting its peer id makes them hits', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const elsewhere = await h.reopen({ dataDir: tempDir(t) })
  assert.notEqual(elsewhere.peerId, h.runner.peerId)
  const run = `echo ran >> ${side.dir}/ran`
  await elsewhere.exec({ name: 's', run })
  const events: RunnerEvent[] = []
  await h.runner.exec({ name: 's', run }, { onEvent: (e) => events.push(e) })
  assert.deepEqual(events.filter((e) => e.type === 'miss').map((e) => (e as { reason: string }).reason), ['invalid-record'])
  assert.equal(side.lines().length, 2)
  // Now the record is ours; a runner trusting the other peer hits on its records too.
  const trusting = await h.reopen({ trustedPeers: [elsewhere.peerId] })
  assert.equal((await trusting.exec({ name: 's', run })).status, 'hit')
  assert.equal(side.lines().length, 2)
})

test('noCache runs every step and refreshes the records', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const proj = tempDir(t)
  const p = pipelineIn(proj, `base: host
steps:
  - name: a
    run: echo a >> ${side.dir}/ran
  - name: b
    cache: false
    run: echo b >> ${side.dir}/ran
  - name: c
    run: echo c >> ${side.dir}/ran
`)
  await h.runner.run(p)
  assert.deepEqual(side.lines(), ['a', 'b', 'c'])
  // An uncached step always runs; the step above it hits when it produced the same layer.
  await h.runner.run(p)
  assert.deepEqual(side.lines(), ['a', 'b', 'c', 'b'])
  await h.runner.run(p, { noCache: true })
  assert.deepEqual(side.lines(), ['a', 'b', 'c', 'b', 'a', 'b', 'c'])
  const why = await h.runner.why(p, 'c')
  assert.deepEqual(why.steps.map((s) => [s.name, s.hit, s.changes.length]), [['a', true, 0], ['b', false, 0], ['c', true, 0]])
})

test('a runner process that dies mid-step takes the step with it; the next runner clears its scratch dir', async (t) => {
  const root = tempDir(t)
  const dataDir = `${root}/data`
  const side = sideChannel(t)
  const child = spawn(process.execPath, [new URL('./fixtures/long-step.ts', import.meta.url).pathname, dataDir, side.dir], { stdio: 'ignore' })
  t.after(() => child.kill('SIGKILL'))
  const deadline = Date.now() + 20_000
  // The shell writes 'started' and then forks the sleep: wait for both.
  while (!side.lines().includes('started') || processesMatching('sleep 97.541').length === 0) {
    assert.ok(Date.now() < deadline, 'the step started and its sleep runs')
    await delay(20)
  }
  assert.equal(processesMatching('sleep 97.541').length, 1)
  child.kill('SIGKILL')
  while (processesMatching('sleep 97.541').length > 0 || mountsMentioning(dataDir).length > 0) {
    assert.ok(Date.now() < deadline, 'the orphaned step and its mounts went away')
    await delay(20)
  }
  assert.equal(readdirSync(`${dataDir}/runner/run`).length, 1, 'the dead run left its scratch dir')
  const store = await openStore({ dataDir })
  t.after(() => store.close())
  await createRunner({ store })
  assert.deepEqual(readdirSync(`${dataDir}/runner/run`), [])
  assert.deepEqual(side.lines(), ['started'])
})

test('a runner\'s sweep leaves a scratch dir another runner is making; one abandoned long ago, or left unlocked, goes', async (t) => {
  const dataDir = `${tempDir(t)}/data`
  const runs = `${dataDir}/runner/run`
  // Being made right now: no lock yet (makeScratch locks it, then gives it its final name).
  mkdirSync(`${runs}/.new-making`, { recursive: true })
  mkdirSync(`${runs}/.new-abandoned`)
  const hourAgo = new Date(Date.now() - 3600_000)
  utimesSync(`${runs}/.new-abandoned`, hourAgo, hourAgo)
  // At its final name without a held lock: its runner is gone.
  mkdirSync(`${runs}/mxdead-000000000000`)
  writeFileSync(`${runs}/mxdead-000000000000/lock`, '')
  const store = await openStore({ dataDir })
  t.after(() => store.close())
  await createRunner({ store })
  assert.deepEqual(readdirSync(runs), ['.new-making'])
})

test('a missing cwd fails with 125; a base without /bin/sh is a sandbox error; argv runs as quoted', async (t) => {
  const h = await harness(t)
  await assert.rejects(h.runner.exec({ name: 'nocwd', cwd: '/no/such/dir', run: 'true' }), (err: StepFailedError) => err.exitCode === 125)
  assert.match(h.out.text, /nocwd \| strata: cwd \/no\/such\/dir does not exist/)
  const empty = tempDir(t)
  await assert.rejects(h.runner.exec({ name: 'nosh', base: { kind: 'dir', path: empty }, run: 'true' }), { code: 'ERR_SANDBOX', detail: /no \/bin\/sh/ })
  const side = sideChannel(t)
  await h.runner.exec({ name: 'argv', run: shellQuote(['sh', '-c', `printf '%s\\n' "$1" > ${side.dir}/arg`, 'x', "it's a $HOME `x`"]) })
  assert.equal(readFileSync(`${side.dir}/arg`, 'utf8'), "it's a $HOME `x`\n")
  assert.deepEqual(await h.store.listLayers().then((l) => l.length), 1)
})
