import { posix } from 'node:path'

/** What a reader accepts. */
export interface RecordPolicy {
  /** Whether records signed by `signer` (a peer id, or a writer key's `NAME-N:BASE64`) in `scope` are accepted. */
  trusts (signer: string, scope: string): boolean
  /** Records written in an earlier epoch are refused. Default 0. */
  epoch?: number
  /** Scopes the reader uses; undefined: any (the daemon checks scope when it reads, not when it learns). */
  scopes?: readonly string[]
}

const SCOPE_GLOB = /^[A-Za-z0-9._+*-]+(?:\/[A-Za-z0-9._+*-]+)*$/

/**
 * A trusted-writer entry: `ID` (trusted in every scope) or `ID@GLOB`, ID being a
 * peer id or a writer key's public part `NAME-N:BASE64`
 * (trusted in the scopes GLOB matches: `*` within one `/`-part, `**` across parts,
 * e.g. `pr/*`). Throws TypeError for a malformed glob.
 */
export function parseWriter (entry: string): { peer: string, scopes: string | null } {
  const at = entry.indexOf('@')
  if (at < 0) return { peer: entry, scopes: null }
  const glob = entry.slice(at + 1)
  if (glob.length > 128 || !SCOPE_GLOB.test(glob) || glob.split('/').some((p) => p === '.' || p === '..')) throw new TypeError(`writer ${JSON.stringify(entry)}: the scope pattern after @ must be scope characters and *, e.g. pr/*`)
  return { peer: entry.slice(0, at), scopes: glob }
}

/** `trusts(peer, scope)` for a list of trusted-writer entries (see parseWriter). */
export function writerTrust (entries: readonly string[]): (peer: string, scope: string) => boolean {
  const byPeer = new Map<string, Array<string | null>>()
  for (const e of entries) {
    const w = parseWriter(e)
    byPeer.set(w.peer, [...(byPeer.get(w.peer) ?? []), w.scopes])
  }
  return (peer, scope) => byPeer.get(peer)?.some((g) => g === null || posix.matchesGlob(scope, g)) ?? false
}

/**
 * Who may write records, where, and since when: a fixed list of writer entries
 * (`PEERID`, or `PEERID@GLOB` for the scopes GLOB matches; undefined: anyone whose
 * signature checks out; `self` always) and an epoch (records of earlier epochs
 * are disowned).
 */
export class TrustPolicy implements RecordPolicy {
  /** The writer entries as given, or undefined for "any signer". */
  readonly writers: readonly string[] | undefined
  readonly self: string
  readonly epoch: number
  readonly #trusts: ((peer: string, scope: string) => boolean) | undefined
  constructor (self: string, writers: readonly string[] | undefined, epoch = 0) {
    this.self = self
    this.writers = writers !== undefined ? [...new Set(writers)] : undefined
    this.#trusts = writers !== undefined ? writerTrust(writers) : undefined
    this.epoch = epoch
  }

  trusts (peer: string, scope: string): boolean {
    return peer === this.self || this.#trusts === undefined || this.#trusts(peer, scope)
  }

  /** This policy, for a reader that uses only `scopes`. */
  reading (scopes: readonly string[]): RecordPolicy {
    return { trusts: (p, s) => this.trusts(p, s), epoch: this.epoch, scopes }
  }
}
