import { scanLeases } from './lease.ts'

/** Commits, restores and removals of one root run one at a time within the process. */
export class RootLocks {
  readonly #dataDir: string
  readonly #tails = new Map<string, Promise<void>>()

  constructor (dataDir: string) {
    this.#dataDir = dataDir
  }

  /** Runs `fn` alone for this root within this process: two commits or restores of one layer never race. */
  async exclusive<T> (root: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#tails.get(root) ?? Promise.resolve()
    const run = before.then(fn, fn)
    const tail = run.then(() => {}, () => {})
    this.#tails.set(root, tail)
    try {
      return await run
    } finally {
      if (this.#tails.get(root) === tail) this.#tails.delete(root)
    }
  }

  /** Roots being committed, restored or removed here now. */
  busy (): IterableIterator<string> {
    return this.#tails.keys()
  }

  /** Roots no collection may remove now: leased by a live process, or busy here (`except` aside). */
  leased (except?: string): Set<string> {
    const held = scanLeases(this.#dataDir).held
    for (const root of this.#tails.keys()) if (root !== except) held.add(root)
    return held
  }
}
