import { mkdtempSync, rmSync } from 'node:fs'
import { storeCompliance } from '@strata/store/compliance'
import { connectDaemon } from '../src/client.ts'
import { createDaemon } from '../src/daemon.ts'
import type { Daemon } from '../src/daemon.ts'

// The runner reaches the store through the daemon's client: it must behave as the store does.
storeCompliance('DaemonClient', async () => {
  const dataDir = mkdtempSync('/var/tmp/strata-compliance-daemon-')
  let daemon: Daemon | undefined
  try {
    daemon = await createDaemon({ listen: ['/ip4/127.0.0.1/tcp/0'], replicas: 0, providerTimeoutMs: 2000, dataDir })
    await daemon.start()
    const client = await connectDaemon(dataDir)
    if (client === undefined) throw new Error(`no daemon answers at ${dataDir}`)
    const started = daemon
    return {
      store: client,
      close: async () => {
        await client.close()
        await started.stop()
        rmSync(dataDir, { recursive: true, force: true })
      }
    }
  } catch (err) {
    await daemon?.stop()
    rmSync(dataDir, { recursive: true, force: true })
    throw err
  }
})
