import type { Logger } from 'pino'
import type { Drop } from '@strata/chunker'

const EXAMPLES = 5

/**
 * What a commit took out of a step's tree so that the layer dir holds exactly
 * what its manifest records (sockets, setuid bits, xattrs a layer does not
 * carry), counted by kind: one log line per kind, however many entries had it.
 */
export class Dropped {
  readonly #kinds = new Map<string, { what: Drop['what'], name: string | undefined, reason: string, count: number, paths: string[] }>()

  add (d: Drop): void {
    const key = `${d.what}\0${d.name ?? ''}`
    let kind = this.#kinds.get(key)
    if (kind === undefined) {
      kind = { what: d.what, name: d.name, reason: d.reason, count: 0, paths: [] }
      this.#kinds.set(key, kind)
    }
    kind.count++
    if (kind.paths.length < EXAMPLES) kind.paths.push(d.path)
  }

  log (log: Logger): void {
    for (const k of this.#kinds.values()) {
      log.info({ dropped: k.what, xattr: k.name, entries: k.count, paths: k.paths }, k.reason)
    }
  }
}
