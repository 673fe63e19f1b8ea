// Preloaded into the daemons by `http-baseline.ts --memory` (node --import): samples
// process.memoryUsage() and writes, to <data dir>/memory-sample.json, the largest of
// each figure so far and all figures at the moment RSS was largest, so that a
// report can tell the main thread's JS heap and external buffers from the rest of
// the resident set (worker threads, allocator, code).

import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { isMainThread } from 'node:worker_threads'

/** What the sampler writes; figures in MB. */
export interface MemorySample {
  peak: Record<string, number>
  atPeakRss: Record<string, number>
}

const SAMPLE_MS = 50
const WRITE_MS = 500
const FIELDS = ['rss', 'heapTotal', 'heapUsed', 'external', 'arrayBuffers'] as const

const dataDir = process.argv[process.argv.indexOf('--data-dir') + 1]
if (isMainThread && process.argv.includes('daemon') && process.argv.includes('--data-dir') && dataDir !== undefined) {
  const file = join(dataDir, 'memory-sample.json')
  const peak: Record<string, number> = {}
  let atPeakRss: Record<string, number> = {}
  let changed = false
  const mb = (n: number): number => Math.round(n / 2 ** 20)
  setInterval(() => {
    const m = process.memoryUsage()
    for (const k of FIELDS) {
      if (m[k] > (peak[k] ?? 0)) {
        peak[k] = m[k]
        changed = true
      }
    }
    if (m.rss >= (peak.rss ?? 0)) atPeakRss = Object.fromEntries(FIELDS.map((k) => [k, m[k]]))
  }, SAMPLE_MS).unref()
  setInterval(() => {
    if (!changed) return
    changed = false
    const sample: MemorySample = {
      peak: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, mb(v)])),
      atPeakRss: Object.fromEntries(Object.entries(atPeakRss).map(([k, v]) => [k, mb(v)]))
    }
    try {
      writeFileSync(file, JSON.stringify(sample))
    } catch {
      // The data dir went away with the run.
    }
  }, WRITE_MS).unref()
}
