import { mkdtempSync, rmSync } from 'node:fs'

/** What tempDir needs of a test: `TestContext`, or anything with `after`. */
export interface AfterHook { after: (fn: () => void) => void }

/**
 * A fresh directory removed when the test ends. It lives under /var/tmp, on the
 * root filesystem: steps get a fresh tmpfs at /tmp, so what a step must see through
 * the host base cannot be there.
 */
export function tempDir (t: AfterHook, prefix = 'strata-test-'): string {
  const dir = mkdtempSync(`/var/tmp/${prefix}`)
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}
