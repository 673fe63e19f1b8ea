import cliProgress from 'cli-progress'
import type { Writable } from 'node:stream'
import type { RunnerEvent } from '@strata/runner'
import { count, formatBytes } from './context.ts'
import type { CommandContext } from './context.ts'

/** One progress bar on a TTY (cli-progress); nothing elsewhere, where plain status lines suffice. */
export class Progress {
  readonly #stream: NodeJS.WriteStream | undefined
  #bar: cliProgress.SingleBar | undefined

  constructor (stream: Writable) {
    const s = stream as Partial<NodeJS.WriteStream>
    this.#stream = s.isTTY === true ? (stream as NodeJS.WriteStream) : undefined
  }

  update (label: string, unit: 'entries' | 'bytes', done: number, total: number): void {
    if (this.#stream === undefined) return
    if (this.#bar === undefined) {
      this.#bar = new cliProgress.SingleBar({
        stream: this.#stream,
        format: total > 0 ? `  ${label} [{bar}] {percentage}% {amount}` : `  ${label} {amount}`,
        hideCursor: true,
        clearOnComplete: true,
        barsize: 30
      }, cliProgress.Presets.shades_classic)
      this.#bar.start(Math.max(total, 1), 0, { amount: '' })
    }
    const amount = unit === 'bytes' ? formatBytes(done) : count(done, 'entry', 'entries')
    if (total > 0) this.#bar.setTotal(total)
    this.#bar.update(total > 0 ? done : 0, { amount })
  }

  stop (): void {
    this.#bar?.stop()
    this.#bar = undefined
  }
}

export const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)}s`

/** A peer id short enough for a status line: its head and tail (all begin alike, `12D3KooW`). */
export const shortPeer = (id: string): string => id.length > 16 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id

/** An error's message as part of a status line: its first line, cut short. */
function oneLine (err: Error): string {
  const first = err.message.split('\n', 1)[0] ?? ''
  return first.length > 300 ? `${first.slice(0, 300)}…` : first
}

/** Renders runner events as one status line per step (or JSON lines), with a progress bar on a TTY. */
export function reporter (ctx: Pick<CommandContext, 'stdout' | 'stderr'>, json: boolean): (e: RunnerEvent) => void {
  const progress = new Progress(ctx.stderr)
  const ran = new Map<string, number>()
  let cacheOff = false
  /** Misses worth a word: the cached layer was there but found corrupt, or too old for the step's ttl. */
  const corrupt = new Set<string>()
  /** Filter patterns and input globs that matched nothing, said on the step's line. */
  const warnings = new Map<string, string[]>()
  const expired = new Set<string>()
  /** `cache: false` steps: they always run, which is no miss. */
  const uncached = new Set<string>()
  const missed = (step: string): string => uncached.has(step) ? 'RAN (not cached)' : `MISS${corrupt.has(step) ? ' (cached layer corrupt)' : expired.has(step) ? ' (expired)' : ''} →`
  const line = (step: string, text: string): void => {
    progress.stop()
    const warn = warnings.get(step) ?? []
    ctx.stderr.write(`${step}: ${text}${warn.map((w) => ` [warning: ${w}]`).join('')}\n`)
  }
  return (e: RunnerEvent) => {
    if (json) {
      if (e.type === 'capture-progress') return
      const { error, ...rest } = e as RunnerEvent & { error?: Error }
      ctx.stdout.write(JSON.stringify(error !== undefined ? { ...rest, error: { message: error.message, code: (error as Error & { code?: string }).code } } : rest) + '\n')
      return
    }
    switch (e.type) {
      case 'key':
        if (e.warnings.length > 0) warnings.set(e.step, e.warnings)
        break
      case 'hit':
        line(e.step, e.source === 'peer'
          ? `HIT peer (${count(e.providers, 'provider')}, ${formatBytes(e.bytes)} in ${seconds(e.durationMs)})`
          : `HIT ${e.source} (${formatBytes(e.size)} in ${seconds(e.durationMs)})`)
        break
      case 'wait':
        line(e.step, `WAIT (building ${e.where === 'process' ? 'in this run' : e.where === 'local' ? (e.holder !== '' ? `in pid ${e.holder}` : 'in another process') : `on ${shortPeer(e.holder)}`})`)
        break
      case 'miss':
        if (e.reason === 'layer-corrupt') corrupt.add(e.step)
        if (e.reason === 'expired') expired.add(e.step)
        if (e.reason === 'uncached-step') uncached.add(e.step)
        break
      case 'ran':
        ran.set(e.step, e.durationMs)
        // With caching off nothing is captured: this is the step's last word.
        if (cacheOff) line(e.step, uncached.has(e.step) ? `RAN (not cached) in ${seconds(e.durationMs)}` : `MISS → ran in ${seconds(e.durationMs)}, not cached`)
        break
      case 'capture-progress':
        progress.update(`${e.step}: capturing`, e.unit, e.done, e.total)
        break
      case 'captured':
        line(e.step, uncached.has(e.step)
          ? `RAN (not cached) in ${seconds(ran.get(e.step) ?? 0)}`
          : `${missed(e.step)} ran in ${seconds(ran.get(e.step) ?? 0)}, captured ${formatBytes(e.size)} in ${seconds(e.durationMs)}`)
        break
      case 'capture-failed':
        line(e.step, uncached.has(e.step)
          ? `RAN (not cached) in ${seconds(ran.get(e.step) ?? 0)}; its layer could not be stored: ${oneLine(e.error)}`
          : `${missed(e.step)} ran in ${seconds(ran.get(e.step) ?? 0)}, not cached: ${oneLine(e.error)}`)
        break
      case 'outputs':
        line(e.step, `outputs ${e.paths.join(', ')} → workspace (${count(e.entries, 'entry', 'entries')}, ${formatBytes(e.bytes)})`)
        break
      case 'exported':
        line('strata', `exported the run's changes to ${e.dir} (${count(e.entries, 'entry', 'entries')}, ${formatBytes(e.bytes)})`)
        break
      case 'cache-off':
        cacheOff = true
        line('strata', `caching is off for the rest of this run: ${oneLine(e.error)}`)
        break
      case 'failed': {
        const why = e.reason === 'exit' ? (e.signal !== null ? `killed by ${e.signal}` : `exit ${e.exitCode ?? '?'}`)
          : e.reason === 'timeout' ? 'timed out' : e.reason === 'cancel' ? 'cancelled' : oneLine(e.error)
        line(e.step, `FAILED (${why})`)
        break
      }
      case 'skipped':
        line(e.step, e.reason === 'parent-failed' ? 'SKIPPED (a step it uses failed)' : 'SKIPPED (cancelled)')
        break
      default:
        break
    }
  }
}
