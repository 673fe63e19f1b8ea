import type { Logger } from 'pino'
import { cidString } from '@strata/chunker'
import { ClaimInvalidError, MAX_LEASE_MS, claimIdHex, compareClaimIds, openClaim } from '@strata/records'
import type { RecordPolicy, RecordRejectReason, StepClaim } from '@strata/records'
import { Recent } from './recent.ts'

/** Live claims held at most, this node's and its peers'. */
export const MAX_CLAIMS = 4096
/** Live claims on one key at most: simultaneous claimants of one key are a handful. */
export const MAX_CLAIMS_PER_KEY = 16
/** Ended claim ids remembered, so that a replayed message of an ended claim does not bring it back. */
const MAX_ENDED = 8192
/**
 * How long an ended claim's id is remembered at least: beyond gossipsub's duplicate
 * window (2 min) and a live copy's last lease elsewhere (MAX_LEASE_MS). A message of
 * it replayed later still lives one lease at most: a wait, never a wrong build.
 */
const ENDED_KEEP_MS = 5 * 60_000

/** One live claim as this node sees it. */
export interface LiveClaim {
  claim: StepClaim
  /** The newest signed envelope of it. */
  envelope: Uint8Array
  /** `claim.id` in hex. */
  id: string
  key: string
  /** When it ends unless renewed, on this node's monotonic clock (`now()`). */
  expiresAt: number
  /** This node's own claim (renewed by its client, not by messages). */
  own: boolean
  /** Its node granted it: said by its node in an answer, or this node's own once granted. */
  decided: boolean
}

export type ClaimEnd = 'released' | 'expired'

export interface ClaimCounters {
  /** This node's claims that won: its runner builds. */
  granted: number
  /** Claims this node's runners made while another node held the key: they wait. */
  held: number
  /** Peers' claims that ended without a release: the holder died or stopped renewing. */
  expired: number
  /** Claims refused (untrusted, malformed, ...). */
  rejected: number
}

export interface ClaimTableComponents {
  /** Monotonic milliseconds; expiry is measured on this node's clock from receipt, never from the claimant's. */
  now(): number
  /** A claim ended (released, or its lease ran out). */
  ended(live: LiveClaim, how: ClaimEnd): void
  logger: Logger
}

export interface ClaimTableInit {
  /** Whose claims count: the records' policy (only trusted signers for the scope, no older epoch). */
  trust: RecordPolicy
  /** This node's peer id: its own claims come from its clients, never from peers. */
  self: string
  counters: ClaimCounters
  /** Claims refused, by reason. */
  rejected: Partial<Record<RecordRejectReason, number>>
  maxClaims?: number
  maxPerKey?: number
}

export type ReceiveOutcome = 'added' | 'renewed' | 'released' | 'stale' | 'ended' | 'own' | 'rejected' | 'full'

/**
 * Which of two claims on a key wins: one already granted (its node said so, or it
 * was renewed: its holder builds) beats one still settling; among equals the lowest
 * claim id. Every node applies the same rule to what it has seen, so simultaneous
 * claimants agree.
 */
export function beats (a: Pick<LiveClaim, 'claim' | 'decided'>, b: Pick<LiveClaim, 'claim' | 'decided'>): boolean {
  const ra = a.decided || a.claim.seq > 0
  const rb = b.decided || b.claim.seq > 0
  if (ra !== rb) return ra
  return compareClaimIds(a.claim.id, b.claim.id) < 0
}

/**
 * The live claims this node knows, by key: its own and its trusted peers'. A peer's
 * claim lives `leaseMs` from the receipt of its newest message (capped by what an
 * answering peer says is left); a message no newer than the one held is ignored, as
 * is any message of a claim that ended. Bounded in claims, claims per key and ended
 * ids remembered.
 */
export class ClaimTable {
  readonly #c: ClaimTableComponents
  readonly #init: ClaimTableInit
  readonly #byKey = new Map<string, Map<string, LiveClaim>>()
  readonly #byId = new Map<string, LiveClaim>()
  readonly #ended: Recent<ClaimEnd>
  readonly #max: number
  readonly #maxPerKey: number

  constructor (components: ClaimTableComponents, init: ClaimTableInit) {
    this.#c = components
    this.#init = init
    this.#max = init.maxClaims ?? MAX_CLAIMS
    this.#maxPerKey = init.maxPerKey ?? MAX_CLAIMS_PER_KEY
    this.#ended = new Recent({ keepMs: ENDED_KEEP_MS, maxEntries: MAX_ENDED, now: () => components.now() })
  }

  get size (): number {
    return this.#byId.size
  }

  /**
   * A claim message from a peer (gossip, or an answer to a direct ask with the time
   * the answering peer says it has left). Verified under the trust policy; a refusal
   * is counted and logged with its reason.
   */
  receive (envelope: Uint8Array, opts: { remainingMs?: number, decided?: boolean, from?: string } = {}): ReceiveOutcome {
    let claim: StepClaim
    try {
      claim = openClaim(envelope, this.#init.trust)
    } catch (err) {
      if (!(err instanceof ClaimInvalidError)) throw err
      this.#init.counters.rejected++
      this.#init.rejected[err.reason] = (this.#init.rejected[err.reason] ?? 0) + 1
      this.#c.logger.warn({ event: 'claim-rejected', err, reason: err.reason, from: opts.from }, 'ignoring a claim')
      return 'rejected'
    }
    const id = claimIdHex(claim.id)
    const key = cidString(claim.key)
    if (claim.claimant === this.#init.self) return 'own'
    if (this.#ended.has(id)) return 'ended'
    this.sweep()
    const held = this.#byId.get(id)
    if (held !== undefined && (held.key !== key || held.claim.claimant !== claim.claimant)) {
      this.#c.logger.warn({ event: 'claim-rejected', reason: 'id-reused', id, key, from: opts.from }, 'ignoring a claim that reuses another claim\'s id')
      return 'rejected'
    }
    if (claim.release) {
      if (held === undefined) {
        this.#remember(id, 'released')
        return 'released'
      }
      this.#end(held, 'released')
      this.#c.logger.info({ event: 'claim-released', key, id, claimant: claim.claimant }, 'a peer released its claim')
      return 'released'
    }
    if (held !== undefined && opts.decided === true) held.decided = true
    if (held !== undefined && claim.seq <= held.claim.seq) return 'stale'
    const lease = Math.min(claim.leaseMs, MAX_LEASE_MS, opts.remainingMs ?? Infinity)
    if (lease <= 0) return 'stale'
    if (held !== undefined) {
      held.claim = claim
      held.envelope = envelope
      held.expiresAt = this.#c.now() + lease
      return 'renewed'
    }
    const onKey = this.#byKey.get(key)
    if (this.#byId.size >= this.#max || (onKey?.size ?? 0) >= this.#maxPerKey) {
      this.#c.logger.warn({ event: 'claim-rejected', reason: 'table-full', key, id, claimant: claim.claimant, live: this.#byId.size }, 'ignoring a claim: the claim table is full')
      return 'full'
    }
    this.#insert({ claim, envelope, id, key, expiresAt: this.#c.now() + lease, own: false, decided: opts.decided === true })
    this.#c.logger.debug({ event: 'claim-learned', key, id, claimant: claim.claimant, seq: claim.seq }, 'a peer claimed a key')
    return 'added'
  }

  /** This node's own claim, announced or renewed: it lives `leaseMs` from now unless renewed again. */
  own (claim: StepClaim, envelope: Uint8Array): LiveClaim {
    const id = claimIdHex(claim.id)
    const held = this.#byId.get(id)
    if (held !== undefined) {
      held.claim = claim
      held.envelope = envelope
      held.expiresAt = this.#c.now() + claim.leaseMs
      return held
    }
    const live: LiveClaim = { claim, envelope, id, key: cidString(claim.key), expiresAt: this.#c.now() + claim.leaseMs, own: true, decided: false }
    this.#insert(live)
    return live
  }

  /** Ends a claim this node holds (its own released or lost); false when it is not live. */
  remove (id: string, how: ClaimEnd): boolean {
    const held = this.#byId.get(id)
    if (held === undefined) return false
    this.#end(held, how)
    return true
  }

  get (id: string): LiveClaim | undefined {
    this.sweep()
    return this.#byId.get(id)
  }

  /** How a claim no longer live ended, when this node saw it end. */
  endOf (id: string): ClaimEnd | undefined {
    return this.#ended.get(id)
  }

  /** Live claims on `key` whose scope is one of `scopes` (all scopes when undefined), the winner first. */
  live (key: string, scopes?: readonly string[]): LiveClaim[] {
    this.sweep()
    const out = [...(this.#byKey.get(key)?.values() ?? [])].filter((l) => scopes === undefined || scopes.includes(l.claim.scope))
    return out.sort((a, b) => beats(a, b) ? -1 : beats(b, a) ? 1 : 0)
  }

  /** The claim that wins `key` among those in `scopes`, if any is live. */
  winner (key: string, scopes?: readonly string[]): LiveClaim | undefined {
    return this.live(key, scopes)[0]
  }

  /** Ends the claims whose lease ran out. */
  sweep (): void {
    const now = this.#c.now()
    for (const l of this.#byId.values()) {
      if (l.expiresAt > now) continue
      this.#end(l, 'expired')
      if (!l.own) {
        this.#init.counters.expired++
        this.#c.logger.info({ event: 'claim-expired', key: l.key, id: l.id, claimant: l.claim.claimant }, 'a peer\'s claim expired: its holder stopped renewing it')
      } else {
        this.#c.logger.info({ event: 'claim-expired', key: l.key, id: l.id, own: true }, 'this node\'s claim expired: its client stopped renewing it')
      }
    }
  }

  #insert (live: LiveClaim): void {
    let onKey = this.#byKey.get(live.key)
    if (onKey === undefined) this.#byKey.set(live.key, onKey = new Map())
    onKey.set(live.id, live)
    this.#byId.set(live.id, live)
  }

  #end (live: LiveClaim, how: ClaimEnd): void {
    this.#byId.delete(live.id)
    const onKey = this.#byKey.get(live.key)
    onKey?.delete(live.id)
    if (onKey?.size === 0) this.#byKey.delete(live.key)
    this.#remember(live.id, how)
    this.#c.ended(live, how)
  }

  #remember (id: string, how: ClaimEnd): void {
    this.#ended.set(id, how)
  }
}
