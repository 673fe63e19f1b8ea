import { mkdtempSync, rmSync } from 'node:fs'
import { openSharedStore, openStore } from '../src/index.ts'
import { storeCompliance } from '../src/compliance.ts'

storeCompliance('openStore', async () => {
  const dataDir = mkdtempSync('/var/tmp/strata-compliance-store-')
  const store = await openStore({ dataDir })
  return {
    store,
    close: async () => {
      await store.close()
      rmSync(dataDir, { recursive: true, force: true })
    }
  }
})

storeCompliance('openSharedStore', async () => {
  const dataDir = mkdtempSync('/var/tmp/strata-compliance-shared-')
  const store = await openSharedStore({ dataDir })
  return {
    store,
    close: async () => {
      await store.close()
      rmSync(dataDir, { recursive: true, force: true })
    }
  }
})
