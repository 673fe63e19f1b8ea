import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import type { ChildProcessWithoutNullStreams } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { CID } from 'multiformats/cid'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openSharedStore, openStore } from '../src/index.ts'
import { assertConsistent, runChild } from './helpers.ts'

const child = join(import.meta.dirname, 'fixtures', 'shared-child.ts')

const tree = (seed: string): Tree => ({
  'etc': { dir: { [`${seed}.conf`]: `seed=${seed}\n` } },
  // Shared by every tree: two layers index the same blocks.
  'lib': { dir: { 'common.so': 'common block\n'.repeat(40_000), [`${seed}.so`]: `${seed}\n`.repeat(30_000) } }
})

interface Child { p: ChildProcessWithoutNullStreams, out: string[], exited: Promise<number | null>, stderr: () => string }

function start (t: { after: (fn: () => Promise<void> | void) => void }, args: string[]): Child {
  const p = spawn(process.execPath, [child, ...args], { stdio: 'pipe' })
  const out: string[] = []
  let stderr = ''
  let rest = ''
  p.stdout.on('data', (b: Buffer) => {
    const lines = (rest + b.toString()).split('\n')
    rest = lines.pop()!
    out.push(...lines)
  })
  p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
  const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)))
  t.after(async () => {
    if (p.exitCode === null && p.signalCode === null) {
      p.kill('SIGKILL')
      await exited
    }
  })
  return { p, out, exited, stderr: () => stderr }
}

async function line (c: Child, text: string): Promise<void> {
  while (!c.out.includes(text)) {
    if (c.p.exitCode !== null) throw new Error(`the child ended before it said ${text}: ${c.stderr()}`)
    await sleep(10)
  }
}

/** Whether `<dataDir>/lock` is free now, asked of flock(1) in another process. */
const lockFree = (dataDir: string): boolean => spawnSync('flock', ['-n', join(dataDir, 'lock'), 'true']).status === 0

test('two processes committing through shared stores at once end with every layer listed and verified', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const expected = new Map<string, unknown>()
  const dirs: string[][] = [[], []]
  const shapes = new Map<string, unknown>()
  for (const [i, list] of dirs.entries()) {
    for (let n = 0; n < 3; n++) {
      const d = join(dir, `tree-${i}-${n}`)
      buildTree(d, tree(`p${i}-t${n}`))
      shapes.set(d, describeTree(d))
      list.push(d)
    }
  }
  const children = dirs.map((list) => start(t, ['commit', data, ...list]))
  await Promise.all(children.map(async (c) => await line(c, 'ready')))
  for (const c of children) c.p.stdin.end('go\n')
  const codes = await Promise.all(children.map(async (c) => await c.exited))
  assert.deepEqual(codes, [0, 0], children.map((c) => c.stderr()).join('\n'))
  for (const [i, c] of children.entries()) {
    const roots = c.out.filter((l) => l !== 'ready')
    assert.equal(roots.length, 3)
    for (const [n, root] of roots.entries()) expected.set(root, shapes.get(dirs[i]![n]!))
  }
  assert.equal(expected.size, 6)
  await assertConsistent(data, expected, dir)
  const store = await openSharedStore({ dataDir: data })
  try {
    for (const root of expected.keys()) assert.equal((await store.verifyLayer(root)).status, 'ok', root)
  } finally {
    await store.close()
  }
})

test('a process calling the store back to back from two loops, alone and inside hold(), lets another process in between its calls', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const stop = join(dir, 'stop')
  const busy = start(t, ['busy', data, stop])
  await line(busy, 'ready')
  // Bounded so that a holder that never lets go fails the test instead of hanging it.
  const store = await openSharedStore({ dataDir: data, waitMs: 30_000 })
  try {
    const d = join(dir, 'tree')
    buildTree(d, tree('here'))
    const info = await store.commit(d)
    assert.ok((await store.listLayers()).some((l) => l.root.equals(info.root)))
    assert.equal(busy.p.exitCode, null, 'the busy process ended before the test got a turn')
  } finally {
    writeFileSync(stop, '')
    await store.close()
  }
  assert.equal(await busy.exited, 0, busy.stderr())
  assert.ok(Number(busy.out.at(-1)) > 0)
})

test('a shared store sees what another process committed between its calls', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const store = await openSharedStore({ dataDir: data })
  try {
    assert.deepEqual(await store.listLayers(), [])
    const d = join(dir, 'tree')
    buildTree(d, tree('other'))
    const other = start(t, ['commit', data, d])
    await line(other, 'ready')
    other.p.stdin.end('go\n')
    assert.equal(await other.exited, 0, other.stderr())
    const root = CID.parse(other.out.at(-1)!)
    assert.equal((await store.getLayer(root))?.entries, 5)
    assert.equal((await store.checkLayer(root)).status, 'ok')
    assert.equal((await store.listLayers()).length, 1)
  } finally {
    await store.close()
  }
})

test('hold() keeps the store between its calls; without it the store is let go once idle', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const store = await openSharedStore({ dataDir: data })
  try {
    await store.hold(async () => {
      await store.getRecord('a')
      await sleep(50)
      assert.equal(lockFree(data), false, 'the store was let go inside hold()')
      await store.putRecord('a', Uint8Array.of(1))
    })
    for (let i = 0; !lockFree(data); i++) {
      assert.ok(i < 500, 'the store was never let go')
      await sleep(10)
    }
    assert.deepEqual(Buffer.from((await store.getRecord('a'))!), Buffer.of(1))
  } finally {
    await store.close()
  }
  assert.equal(lockFree(data), true)
})

test('an exclusive opener and shared stores keep out of each other\'s way; a bounded wait names the holder', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const shared = await openSharedStore({ dataDir: data })
  await assert.rejects(openStore({ dataDir: data, wait: false }), { code: 'ERR_STORE_LOCKED' })
  await shared.close()
  const exclusive = await openStore({ dataDir: data })
  try {
    await assert.rejects(openSharedStore({ dataDir: data, wait: false }), { code: 'ERR_STORE_LOCKED' })
    await assert.rejects(openSharedStore({ dataDir: data, waitMs: 200 }), (err: { code?: string, holder?: { pid: number }, message: string }) => {
      assert.equal(err.code, 'ERR_STORE_BUSY')
      assert.equal(err.holder?.pid, process.pid)
      assert.match(err.message, new RegExp(`^another strata process \\(pid ${process.pid}: .*\\) still holds ${data} after 0\\.2s$`))
      return true
    })
  } finally {
    await exclusive.close()
  }
  // A turn waits for another process holding the data dir's lock, and fails past waitMs.
  const bounded = await openSharedStore({ dataDir: data, waitMs: 300 })
  // Its own process group: the sleep it starts holds the lock too, and goes with it.
  const holder = spawn('flock', [join(data, 'lock'), '-c', 'echo locked; exec sleep 60'], { stdio: ['ignore', 'pipe', 'ignore'], detached: true })
  const kill = async (): Promise<void> => {
    if (holder.exitCode !== null || holder.signalCode !== null) return
    const gone = once(holder, 'exit')
    process.kill(-holder.pid!, 'SIGKILL')
    await gone
  }
  t.after(kill)
  try {
    await once(holder.stdout, 'data')
    await assert.rejects(bounded.listLayers(), (err: { code?: string, holder?: { pid: number, command: string } }) => {
      assert.equal(err.code, 'ERR_STORE_BUSY')
      assert.equal(err.holder?.pid, holder.pid)
      assert.match(err.holder?.command ?? '', /^flock /)
      return true
    })
    await kill()
    assert.deepEqual(await bounded.listLayers(), [])
  } finally {
    await bounded.close()
  }
})

test('a commit packs its tree between two turns: another process reads the store while the walk is under way', async (t) => {
  const dir = tempDir(t, 'share-store-')
  const data = join(dir, 'data')
  const files: Tree = {}
  for (let i = 0; i < 6000; i++) files[`f${i}`] = `file ${i}\n`
  const d = join(dir, 'tree')
  buildTree(d, { many: { dir: files } })
  const packer = start(t, ['pack', data, d])
  await line(packer, 'packing')
  // Stopped where it holds no turn (it would hold one for its index writes, after the walk).
  let free = false
  for (let i = 0; !free; i++) {
    assert.ok(i < 500, 'the store stayed held while the commit packed')
    process.kill(packer.p.pid!, 'SIGSTOP')
    free = lockFree(data) && !packer.out.some((l) => l.startsWith('baf'))
    if (!free) {
      process.kill(packer.p.pid!, 'SIGCONT')
      await sleep(10)
    }
  }
  try {
    const store = await openSharedStore({ dataDir: data, waitMs: 20_000 })
    try {
      assert.deepEqual(await store.listLayers(), [])
      await store.putRecord('meanwhile', Buffer.from('yes'))
    } finally {
      await store.close()
    }
  } finally {
    process.kill(packer.p.pid!, 'SIGCONT')
  }
  assert.equal(await packer.exited, 0, packer.stderr())
  const root = CID.parse(packer.out.at(-1)!)
  const store = await openSharedStore({ dataDir: data })
  try {
    assert.equal((await store.getLayer(root))?.entries, 6001)
    assert.equal((await store.verifyLayer(root)).status, 'ok')
    assert.deepEqual(Buffer.from((await store.getRecord('meanwhile'))!), Buffer.from('yes'))
  } finally {
    await store.close()
  }
})

for (const point of ['packing', 'commit:manifest-partial', 'commit:manifest-written', 'commit:renamed', 'commit:located'] as const) {
  const survives = point === 'commit:renamed' || point === 'commit:located'
  test(`a shared store's commit killed at ${point} leaves the store consistent, with the layer ${survives ? 'complete' : 'absent'}`, async (t) => {
    const dir = tempDir(t, 'share-store-')
    const data = join(dir, 'data')
    const template = join(dir, 'template')
    // Enough entries for the walk to say it is under way before it ends.
    const files: Tree = {}
    for (let i = 0; i < (point === 'packing' ? 1500 : 10); i++) files[`f${i}`] = `file ${i}\n`
    buildTree(template, { many: { dir: files }, ...tree('kill') })
    const expected = describeTree(template)
    // The root, from a commit elsewhere of the same tree.
    execFileSync('cp', ['-a', template, join(dir, 'ref')])
    const other = await openStore({ dataDir: join(dir, 'other') })
    const root = (await other.commit(join(dir, 'ref'))).root.toString()
    await other.close()
    const src = join(dir, 'src')
    execFileSync('cp', ['-a', template, src])
    if (point === 'packing') {
      const packer = start(t, ['pack-freeze', data, src])
      await line(packer, 'packing')
      packer.p.kill('SIGKILL')
      await packer.exited
      // Its held staging dir is there until a turn's recovery finds it unheld.
      assert.equal(readdirSync(join(data, 'staging')).length, 1)
    } else {
      const ended = await runChild(join(import.meta.dirname, 'fixtures', 'failpoint-child.ts'), ['shared-commit', data, src], { STRATA_FAILPOINT: point })
      assert.equal(ended.signal, 'SIGKILL', `the child did not reach ${point}: ${ended.stderr}`)
    }
    assert.deepEqual(await assertConsistent(data, new Map([[root, expected]]), dir), survives ? [root] : [])
    const store = await openSharedStore({ dataDir: data })
    try {
      execFileSync('cp', ['-a', template, join(dir, 'again')])
      assert.equal((await store.commit(join(dir, 'again'))).root.toString(), root)
      assert.equal((await store.verifyLayer(root)).status, 'ok')
    } finally {
      await store.close()
    }
  })
}
