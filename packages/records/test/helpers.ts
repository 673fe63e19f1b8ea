import { mkdtempSync, rmSync } from 'node:fs'
import type { TestContext } from 'node:test'

/** A fresh directory under /var/tmp, removed when the test ends. */
export function tempDir (t: TestContext, prefix = 'strata-records-'): string {
  const dir = mkdtempSync(`/var/tmp/${prefix}`)
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}
