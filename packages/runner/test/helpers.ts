import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { TestContext } from 'node:test'
import { openStore } from '@strata/store'
import type { LocalStore } from '@strata/store'
import type { Store } from '@strata/store'
import { Sink, tempDir } from '@strata/testing'
import { createRunner, parsePipeline } from '../src/index.ts'
import type { Runner, RunnerEvent, RunnerInit } from '../src/index.ts'

/** Parses `yml` as the strata.yml of `dir` (made if absent), where it is also written (a step may read it). */
export function pipelineIn (dir: string, yml: string): ReturnType<typeof parsePipeline> {
  mkdirSync(dir, { recursive: true })
  writeFileSync(`${dir}/strata.yml`, yml)
  return parsePipeline(yml, { file: `${dir}/strata.yml` })
}

/**
 * Where side channels live: a host dir that harness() runners share with every step
 * (RunnerInit.shared), on the root filesystem so that the host base already has it.
 */
export const SIDE_ROOT = '/var/tmp/strata-test-side'
mkdirSync(SIDE_ROOT, { recursive: true })

/**
 * A directory steps of harness() runners can write to on the host: what a step
 * appends there is seen outside the overlay, which proves the command really ran.
 */
export function sideChannel (t: TestContext): { dir: string, lines: (name?: string) => string[] } {
  const dir = mkdtempSync(`${SIDE_ROOT}/s-`)
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return {
    dir,
    lines: (name = 'ran') => {
      try {
        return readFileSync(`${dir}/${name}`, 'utf8').split('\n').filter((l) => l !== '')
      } catch {
        return []
      }
    }
  }
}

export interface Harness {
  store: Store & LocalStore
  runner: Runner
  dataDir: string
  out: Sink
  events: RunnerEvent[]
  onEvent: (e: RunnerEvent) => void
  /** Reopens the runner (same store) with other options. */
  reopen: (init?: Partial<RunnerInit>) => Promise<Runner>
}

export async function harness (t: TestContext, init: Partial<RunnerInit> = {}): Promise<Harness> {
  const root = tempDir(t)
  const dataDir = `${root}/data`
  const store = await openStore({ dataDir })
  t.after(() => store.close())
  const out = new Sink()
  const events: RunnerEvent[] = []
  const make = async (extra: Partial<RunnerInit> = {}): Promise<Runner> => await createRunner({
    store, output: { stdout: out, stderr: out, prefix: true }, killGraceMs: 2000, shared: [SIDE_ROOT], ...init, ...extra
  })
  return { store, runner: await make(), dataDir, out, events, onEvent: (e) => events.push(e), reopen: make }
}

/** Every mount, in every mount namespace on the machine, whose line mentions `needle`. */
export function mountsMentioning (needle: string): string[] {
  const found = new Set<string>()
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    let text: string
    try {
      text = readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n')) if (line.includes(needle)) found.add(line)
  }
  return [...found]
}

/** Processes whose command line starts with `needle` (e.g. "sleep 97.5"). */
export function processesMatching (needle: string): number[] {
  const out: number[] = []
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').startsWith(needle)) out.push(Number(pid))
    } catch {
      // gone
    }
  }
  return out
}

export function statuses (events: readonly RunnerEvent[]): string[] {
  return events.filter((e) => e.type === 'hit' || e.type === 'captured' || e.type === 'failed')
    .map((e) => `${e.step}:${e.type === 'captured' ? 'ran' : e.type}`)
}
