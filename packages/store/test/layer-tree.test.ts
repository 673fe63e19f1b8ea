import { test } from 'node:test'
import assert from 'node:assert/strict'
import { appendFileSync, chmodSync, chownSync, lchownSync, linkSync, lstatSync, mkdirSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import type { Stats } from 'node:fs'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { createServer } from 'node:net'
import fc from 'fast-check'
import { lsetxattr, lutimens, mknod, S_IFIFO } from '@strata/sys'
import { buildTree, describeTree, tempDir } from '@strata/testing'
import type { Tree } from '@strata/testing'
import { openStore } from '../src/index.ts'
import type { Store } from '../src/index.ts'

/**
 * One tree per layer: what a step's layer shows when its own dir is mounted (a
 * local hit) and when a peer materialized it from the manifest (a peer hit) must
 * be the same, seen through a real OverlayFS mount as the runner makes one.
 * FUZZ_RUNS raises the number of cases (scripts/fuzz.ts).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 0) || undefined
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined

// The runner's options (packages/runner/src/sandbox.ts), without userxattr.
const OVERLAY_OPTS = 'redirect_dir=off,metacopy=off,index=off,xino=off,uuid=null'

/** Mounts made by a test, all unmounted by `release()` whatever happened. */
class Mounts {
  readonly #points: string[] = []

  overlay (target: string, opts: string): void {
    mkdirSync(target, { recursive: true })
    execFileSync('mount', ['-t', 'overlay', 'strata-tree-test', '-o', opts, target])
    this.#points.push(target)
  }

  unmount (target: string): void {
    execFileSync('umount', [target])
    this.#points.splice(this.#points.indexOf(target), 1)
  }

  release (): void {
    for (const p of this.#points.splice(0).reverse()) {
      try {
        execFileSync('umount', [p])
      } catch {
        execFileSync('umount', ['-l', p])
      }
    }
  }
}

/** Runs `step` against the merged view of a fresh upper dir over `base`, as the runner does; returns the upper dir. */
async function runStep (mounts: Mounts, dir: string, base: string, step: (merged: string) => Promise<void> | void): Promise<string> {
  for (const d of ['u', 'w']) mkdirSync(join(dir, d), { recursive: true })
  const merged = join(dir, 'm')
  mounts.overlay(merged, `lowerdir=${base},upperdir=${join(dir, 'u')},workdir=${join(dir, 'w')},${OVERLAY_OPTS}`)
  try {
    await step(merged)
  } finally {
    mounts.unmount(merged)
  }
  return join(dir, 'u')
}

/** The merged tree a later step sees with `layer` mounted as the lower dir over `base`. */
function viewOf (mounts: Mounts, at: string, layer: string, base: string): Record<string, unknown> {
  mounts.overlay(at, `ro,lowerdir=${layer}:${base},${OVERLAY_OPTS}`)
  try {
    return describeTree(at)
  } finally {
    mounts.unmount(at)
  }
}

/** Commits `upper` on the producer and restores it on the consumer as a peer hit does; the two layer dirs. */
async function localAndPeer (producer: Store, consumer: Store, upper: string): Promise<{ local: string, peer: string }> {
  const layer = await producer.commit(upper)
  const restored = await consumer.restore(layer.root, producer, { untrusted: true })
  return { local: layer.path, peer: restored.path }
}

async function stores (t: { after: (fn: () => Promise<void>) => void }, dir: string): Promise<{ producer: Store, consumer: Store }> {
  const producer = await openStore({ dataDir: join(dir, 'producer') })
  t.after(async () => { await producer.close() })
  const consumer = await openStore({ dataDir: join(dir, 'consumer') })
  t.after(async () => { await consumer.close() })
  return { producer, consumer }
}

/** Binds a unix socket at `path` and leaves the socket file behind when the server closes. */
async function makeSocket (path: string): Promise<void> {
  const server = createServer()
  const bound = `${path}.bound`
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(bound, resolve)
  })
  linkSync(bound, path)
  await new Promise<void>((resolve) => server.close(() => { resolve() }))
  rmSync(bound, { force: true })
}

test('a dir marked user.overlay.opaque by a step shows the lower files on a local hit and on a peer hit alike', async (t) => {
  const dir = tempDir(t, 'strata-tree-')
  const mounts = new Mounts()
  try {
    const base = join(dir, 'base')
    buildTree(base, { usr: { dir: { share: { dir: { doc: { dir: { a: 'a', b: 'b', c: 'c' } } } } } } })
    const { producer, consumer } = await stores(t, dir)
    const upper = await runStep(mounts, join(dir, 'step'), base, (m) => {
      lsetxattr(join(m, 'usr/share/doc'), 'user.overlay.opaque', Buffer.from('y'))
    })
    const { local, peer } = await localAndPeer(producer, consumer, upper)
    const localView = viewOf(mounts, join(dir, 'view-local'), local, base)
    const peerView = viewOf(mounts, join(dir, 'view-peer'), peer, base)
    assert.deepEqual(peerView, localView)
    // The mount ignores user.overlay.opaque (no userxattr): the next step sees the lower files.
    mounts.overlay(join(dir, 'list'), `ro,lowerdir=${peer}:${base},${OVERLAY_OPTS}`)
    assert.deepEqual(readdirSync(join(dir, 'list', 'usr/share/doc')).sort(), ['a', 'b', 'c'])
  } finally {
    mounts.release()
  }
})

test('a socket a step leaves behind is in neither the local layer dir nor the peer\'s', async (t) => {
  const dir = tempDir(t, 'strata-tree-')
  const mounts = new Mounts()
  try {
    const base = join(dir, 'base')
    buildTree(base, { run: { dir: { 'pid': '1' } } })
    const { producer, consumer } = await stores(t, dir)
    const upper = await runStep(mounts, join(dir, 'step'), base, async (m) => {
      await makeSocket(join(m, 'run/app.sock'))
      writeFileSync(join(m, 'run/kept'), 'x')
    })
    assert.ok(lstatSync(join(upper, 'run/app.sock')).isSocket())
    const { local, peer } = await localAndPeer(producer, consumer, upper)
    const localView = viewOf(mounts, join(dir, 'view-local'), local, base)
    assert.deepEqual(viewOf(mounts, join(dir, 'view-peer'), peer, base), localView)
    assert.deepEqual(Object.keys(localView).filter((p) => p.startsWith('run/')).sort(), ['run/kept', 'run/pid'])
  } finally {
    mounts.release()
  }
})

// ---- the property: random steps, local hit == peer hit ----

const NAMES = ['d0', 'd1', 'f0', 'f1', 'doc', `long-${'\u00e9'.repeat(120)}`]
const pathArb = fc.array(fc.constantFrom(...NAMES), { minLength: 1, maxLength: 3 })
const modeArb = fc.integer({ min: 0, max: 0o7777 })
const idArb = fc.constantFrom(0, 1, 1000, 65534)
const XATTRS = ['user.a', 'user.b', 'trusted.t', 'security.s', 'user.overlay.opaque', 'user.overlay.redirect', 'trusted.overlay.x', 'trusted.overlay.opaque']
const bytesArb = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.integer({ min: 4097, max: 70_000 }).map((n) => new Uint8Array(n).map((_, i) => (i * 31 + n) & 0xff))
)

type Op =
  | { op: 'file', path: string[], data: Uint8Array, mode: number, uid: number, gid: number }
  | { op: 'append', path: string[], data: Uint8Array }
  | { op: 'truncate', path: string[], size: number }
  | { op: 'mkdir', path: string[], mode: number }
  | { op: 'rm', path: string[] }
  | { op: 'replace-dir', path: string[] }
  | { op: 'symlink', path: string[], target: string }
  | { op: 'hardlink', path: string[], from: string[] }
  | { op: 'fifo', path: string[] }
  | { op: 'socket', path: string[] }
  | { op: 'xattr', path: string[], name: string, value: Uint8Array }
  | { op: 'chmod', path: string[], mode: number }
  | { op: 'chown', path: string[], uid: number, gid: number }
  | { op: 'mtime', path: string[], time: [number, number] }

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('file' as const), path: pathArb, data: bytesArb, mode: modeArb, uid: idArb, gid: idArb }) },
  fc.record({ op: fc.constant('append' as const), path: pathArb, data: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ op: fc.constant('truncate' as const), path: pathArb, size: fc.integer({ min: 0, max: 300_000 }) }),
  { weight: 2, arbitrary: fc.record({ op: fc.constant('mkdir' as const), path: pathArb, mode: modeArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('rm' as const), path: pathArb }) },
  fc.record({ op: fc.constant('replace-dir' as const), path: pathArb }),
  fc.record({ op: fc.constant('symlink' as const), path: pathArb, target: fc.constantFrom('f0', '../d1/f1', '/etc/passwd', 'line\nbreak', ' space\t', '\\back', '\u540d\u524d', 'x'.repeat(300)) }),
  fc.record({ op: fc.constant('hardlink' as const), path: pathArb, from: pathArb }),
  fc.record({ op: fc.constant('fifo' as const), path: pathArb }),
  fc.record({ op: fc.constant('socket' as const), path: pathArb }),
  { weight: 3, arbitrary: fc.record({ op: fc.constant('xattr' as const), path: fc.array(fc.constantFrom(...NAMES), { minLength: 0, maxLength: 3 }), name: fc.constantFrom(...XATTRS), value: fc.oneof(fc.constant(Uint8Array.of(0x79)), fc.uint8Array({ maxLength: 8 })) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('chmod' as const), path: pathArb, mode: modeArb }) },
  fc.record({ op: fc.constant('chown' as const), path: pathArb, uid: idArb, gid: idArb }),
  fc.record({ op: fc.constant('mtime' as const), path: pathArb, time: fc.tuple(fc.integer({ min: 0, max: 2 ** 32 }), fc.integer({ min: 0, max: 999_999_999 })) })
)

function statOf (p: string): Stats | undefined {
  try {
    return lstatSync(p)
  } catch {
    return undefined
  }
}

/** Creates the missing parents of `path` under `m`; false when one is not a directory. */
function parents (m: string, path: string[]): boolean {
  for (let i = 1; i < path.length; i++) {
    const p = join(m, ...path.slice(0, i))
    const st = statOf(p)
    if (st === undefined) mkdirSync(p)
    else if (!st.isDirectory()) return false
  }
  return true
}

/** What a step's command might do, through the merged view. Ops that do not apply (no such file...) do nothing. */
async function apply (m: string, op: Op): Promise<void> {
  const p = join(m, ...op.path)
  const st = statOf(p)
  const fresh = (): boolean => st === undefined && parents(m, op.path)
  switch (op.op) {
    case 'file':
      if (!fresh()) return
      writeFileSync(p, op.data)
      chownSync(p, op.uid, op.gid)
      chmodSync(p, op.mode)
      return
    case 'append':
      if (st?.isFile() === true) appendFileSync(p, op.data)
      return
    case 'truncate':
      if (st?.isFile() === true) truncateSync(p, op.size)
      return
    case 'mkdir':
      if (!fresh()) return
      mkdirSync(p)
      chmodSync(p, op.mode)
      return
    case 'rm':
      rmSync(p, { recursive: true, force: true })
      return
    case 'replace-dir':
      if (st?.isDirectory() !== true) return
      rmSync(p, { recursive: true })
      mkdirSync(p)
      return
    case 'symlink':
      if (fresh()) symlinkSync(op.target, p)
      return
    case 'hardlink': {
      const from = join(m, ...op.from)
      // link() does not follow a symlink: symlinks and FIFOs get hardlinked too.
      const of = statOf(from)
      if (of !== undefined && !of.isDirectory() && fresh()) linkSync(from, p)
      return
    }
    case 'fifo':
      if (fresh()) mknod(p, S_IFIFO | 0o640)
      return
    case 'socket':
      if (fresh() && statOf(`${p}.bound`) === undefined) await makeSocket(p)
      return
    case 'xattr':
      // The kernel refuses user.* on symlinks and FIFOs (EPERM), takes trusted.* and security.* anywhere.
      if (st !== undefined) lsetxattr(p, op.name, op.value)
      return
    case 'chmod':
      if (st !== undefined && !st.isSymbolicLink()) chmodSync(p, op.mode)
      return
    case 'chown':
      if (st !== undefined) lchownSync(p, op.uid, op.gid)
      return
    case 'mtime':
      if (st !== undefined) lutimens(p, op.time, op.time)
  }
}

const BASE: Tree = {
  d0: { dir: { f0: 'base d0/f0', f1: { file: 'setuid in the base', mode: 0o4755 }, d1: { dir: { f0: 'deep' } } } },
  d1: { dir: { f1: 'base d1/f1', doc: { dir: { f0: 'a', f1: 'b' } } } },
  f0: 'base f0',
  f1: { symlink: 'd0/f0' },
  doc: { dir: { d0: { dir: {} }, f0: 'x'.repeat(20_000) } }
}

test('random steps: the merged tree over a local layer dir and over the peer\'s copy of it is the same', async (t) => {
  const dir = tempDir(t, 'strata-tree-')
  const base = join(dir, 'base')
  buildTree(base, BASE)
  const { producer, consumer } = await stores(t, dir)
  let n = 0
  let changed = 0
  await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 14 }), async (ops) => {
    const run = join(dir, `r${n++}`)
    const mounts = new Mounts()
    try {
      const upper = await runStep(mounts, run, base, async (m) => {
        for (const op of ops) {
          try {
            await apply(m, op)
          } catch (err) {
            // The kernel refusing an op (a name too long, an xattr on a special file) is a step's failed command, not a test failure.
            if (!['ENAMETOOLONG', 'EPERM', 'EOPNOTSUPP', 'EINVAL', 'EISDIR', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err
          }
        }
      })
      if (readdirSync(upper).length > 0) changed++
      const { local, peer } = await localAndPeer(producer, consumer, upper)
      const localView = viewOf(mounts, join(run, 'view-local'), local, base)
      const peerView = viewOf(mounts, join(run, 'view-peer'), peer, base)
      assert.deepEqual(peerView, localView)
    } finally {
      mounts.release()
      rmSync(run, { recursive: true, force: true })
    }
  }), { numRuns: RUNS ?? 40, ...(SEED !== undefined ? { seed: SEED } : {}) })
  t.diagnostic(`${changed} of ${n} random steps changed the tree`)
  assert.ok(changed > n / 2, 'most random steps should change something')
})
