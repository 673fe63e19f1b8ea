import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { pino } from 'pino'
import { tempDir } from '@strata/testing'
import { ManifestIndex } from '../src/manifest.ts'
import { MBLOCK } from '../src/keys.ts'
import type { Index } from '../src/keys.ts'

/** The database's open resources (chained batches, iterators): what it holds until they are closed. */
function countResources (db: Index): { open: () => number } {
  let open = 0
  const attach = db.attachResource.bind(db)
  const detach = db.detachResource.bind(db)
  db.attachResource = (r) => { open++; attach(r) }
  db.detachResource = (r) => { open--; detach(r) }
  return { open: () => open }
}

async function block (i: number): Promise<{ cid: CID, bytes: Uint8Array }> {
  const bytes = new TextEncoder().encode(`manifest block ${i}`)
  return { cid: CID.createV1(raw.code, await sha256.digest(bytes)), bytes }
}

test('manifest streams leave no batch open in the index, written, empty or abandoned', async (t) => {
  const db: Index = new ClassicLevel(join(tempDir(t), 'index'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  await db.open()
  t.after(async () => { await db.close() })
  const resources = countResources(db)
  const manifests = new ManifestIndex(db, pino({ level: 'silent' }), { sweepAtNextOpen: false })
  for (let i = 0; i < 50; i++) {
    const lists = manifests.stream()
    if (i % 3 !== 2) lists.add(await block(i))
    if (i % 3 === 0) await lists.flush()
    await lists.end(i % 3 === 0)
  }
  assert.equal(resources.open(), 0, 'batches left attached to the database')
  assert.equal(manifests.inFlight, 0)
  assert.ok(await db.get(MBLOCK.key((await block(0)).cid.toString())) !== undefined, 'a flushed block is written')
  assert.equal(await db.get(MBLOCK.key((await block(1)).cid.toString())), undefined, 'an unflushed block is not')
})
