import cliProgress from 'cli-progress'
import type { Writable } from 'node:stream'
import { count, formatBytes } from './context.ts'

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
