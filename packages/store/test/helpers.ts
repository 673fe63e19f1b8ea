import assert from 'node:assert/strict'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { ClassicLevel } from 'classic-level'
import { decodeRoot, manifestLinks } from '@strata/chunker'
import { describeTree } from '@strata/testing'
import { openStore } from '../src/index.ts'
import { BLOCK, K_OPEN, LAYER, MBLOCK, PENDING, REMOVING, USED } from '../src/keys.ts'
import type { Family } from '../src/keys.ts'

/** Runs a child (node FILE ...args) and resolves with how it ended. */
export async function runChild (file: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null, signal: NodeJS.Signals | null, stderr: string }> {
  const p = spawn(process.execPath, [file, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } })
  let stderr = ''
  p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
  return await new Promise((resolve, reject) => {
    p.on('error', reject)
    p.on('exit', (code, signal) => resolve({ code, signal, stderr }))
  })
}

/**
 * Opens the store as a restart would and checks it is consistent: staging is
 * empty, the layer dirs are exactly the indexed layers, every layer unpacks to
 * what `expected` says its root holds; then, with the store closed, that the index
 * holds no marker and no key of a layer that is not there. Returns the layers.
 */
export async function assertConsistent (dataDir: string, expected: Map<string, unknown>, scratch: string): Promise<string[]> {
  const store = await openStore({ dataDir })
  let roots: string[]
  try {
    assert.deepEqual(readdirSync(join(dataDir, 'staging')), [], 'staging was not cleaned')
    roots = (await store.listLayers()).map((l) => l.root.toString()).sort()
    assert.deepEqual(readdirSync(join(dataDir, 'layers')).sort(), roots, 'a layer dir exists without its index entry or the reverse')
    for (const root of roots) {
      assert.ok(expected.has(root), `unexpected layer ${root}`)
      const out = join(scratch, `check-${root}-${Date.now()}`)
      await store.unpack((await store.listLayers()).find((l) => l.root.toString() === root)!.root, out)
      assert.deepEqual(describeTree(out), expected.get(root), `layer ${root} does not unpack to what it was`)
    }
  } finally {
    await store.close()
  }
  const db = new ClassicLevel<string, Uint8Array>(join(dataDir, 'index'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  try {
    const live = new Set(roots)
    const linked = new Set<string>()
    for (const root of roots) {
      linked.add(root)
      for (const c of manifestLinks(decodeRoot((await db.get(MBLOCK.key(root)))!))) linked.add(c.toString())
    }
    const within = (key: string, f: Pick<Family, 'range'>): boolean => key >= f.range.gte && key < f.range.lt
    for await (const key of db.keys()) {
      assert.ok(!within(key, PENDING), `marker left: ${key}`)
      assert.ok(!within(key, REMOVING), `marker left: ${key}`)
      if (within(key, BLOCK)) assert.ok(live.has(BLOCK.layer(key)), `orphan block location ${key}`)
      if (within(key, MBLOCK)) assert.ok(linked.has(MBLOCK.id(key)), `orphan manifest block ${key}`)
      for (const f of [USED, LAYER]) if (within(key, f)) assert.ok(live.has(f.id(key)), `orphan ${key}`)
      assert.notEqual(key, K_OPEN, 'the store was closed but still looks open')
    }
  } finally {
    await db.close()
  }
  return roots
}
