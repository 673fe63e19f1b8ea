import { readdirSync } from 'node:fs'
import { getHeapSpaceStatistics, getHeapStatistics } from 'node:v8'
import { mallocInfo, type MallocInfo } from '@strata/sys'
import type { TrimCounters } from './malloc-trim.ts'
import type { HugePageCounters } from './huge-pages.ts'

/** How a step was served, as the runner reports it (`/v1/event`) or the daemon resolved it. */
export type HitSource = 'local' | 'peer' | 'miss'

export interface RecentHit { source: HitSource, at: number }

/** What `strata status` shows of this process: memory and descriptors, for soaks and leak hunts. */
export interface ProcessStats {
  rss: number
  heapUsed: number
  heapTotal: number
  /** The V8 heap just after a full collection (asked with `liveHeap`, where the process can collect): what the heap holds, without the garbage `heapUsed` counts until its next collection. */
  heapLive?: number
  /** Of the live heap, the compiled program: machine code and bytecode (V8's code and trusted spaces). It grows as V8 compiles and optimizes more of the program, and says how much of a rise is that. */
  heapCode?: number
  external: number
  arrayBuffers: number
  /** What V8 itself allocates with malloc, outside its heap's pages: its compilers' zones, handles, tables. */
  v8Malloced: number
  /** glibc malloc's heaps (native allocations: Buffers' backing stores, LevelDB, zstd, sockets); absent off glibc. */
  malloc?: MallocInfo
  /** Bytes LevelDB holds in memory (block cache, memtables), within malloc's: the store's index, the DHT's provider records. */
  leveldb?: { index: number, dht: number }
  /** The malloc trimmer's work (malloc-trim.ts), where it runs. */
  trims?: TrimCounters
  /** The huge-page gate's work (huge-pages.ts), where it runs. */
  hugePages?: HugePageCounters
  fds: number
  uptimeS: number
}

/** Hits and misses remembered for the fleet view: the last RECENT_HITS only, and totals. */
export const RECENT_HITS = 64

export class HitLog {
  readonly totals: Record<HitSource, number> = { local: 0, peer: 0, miss: 0 }
  readonly #recent: RecentHit[] = []

  add (source: HitSource): void {
    this.totals[source]++
    this.#recent.push({ source, at: Date.now() })
    if (this.#recent.length > RECENT_HITS) this.#recent.shift()
  }

  get recent (): RecentHit[] {
    return [...this.#recent]
  }
}

/** This process's memory and fds; with `liveHeap`, after a full collection (when `gc` is exposed: the CLI starts the daemon with `--expose-gc`). */
export function processStats (opts: { liveHeap?: boolean } = {}): ProcessStats {
  const m = process.memoryUsage()
  // Read after the figures above, which stay as they were before the collection.
  const gc = (globalThis as { gc?: () => void }).gc
  let heapLive: number | undefined
  let heapCode: number | undefined
  if (opts.liveHeap === true && gc !== undefined) {
    gc()
    heapLive = process.memoryUsage().heapUsed
    heapCode = getHeapSpaceStatistics().filter((s) => /^(code|trusted)_/.test(s.space_name)).reduce((sum, s) => sum + s.space_used_size, 0)
  }
  const malloc = mallocInfo?.()
  let fds = -1
  try {
    fds = readdirSync('/proc/self/fd').length
  } catch {
    // Not Linux: unknown.
  }
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, ...(heapLive !== undefined ? { heapLive, heapCode } : {}), external: m.external, arrayBuffers: m.arrayBuffers, v8Malloced: getHeapStatistics().malloced_memory, ...(malloc !== undefined ? { malloc } : {}), fds, uptimeS: Math.round(process.uptime()) }
}
