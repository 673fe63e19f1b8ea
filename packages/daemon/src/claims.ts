import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { CLAIM_FORMAT, CLAIM_ID_BYTES, ClaimInvalidError, MAX_CLAIM_SIZE, MAX_LEASE_MS, claimIdHex, openClaim, signClaim } from '@strata/records'
import type { Identity, RecordRejectReason, StepClaim, TrustPolicy } from '@strata/records'
import { ClaimTable } from './claim-table.ts'
import type { ClaimCounters, ClaimEnd, LiveClaim } from './claim-table.ts'
import { CLAIM_LEASE_MS } from './protocol.ts'
import { BadRequestError, ClaimNotFoundError, ClaimsBusyError, ProtocolViolationError } from './errors.ts'

/** Claims are announced, renewed and released on this gossip topic. */
export const CLAIMS_TOPIC = '/strata/claims/1'
/**
 * `/strata/claims/1.0.0`: the client sends one frame, dag-cbor `{ key, claim? }` (its
 * own claim on the key, which the server takes in first); the server answers one
 * frame, dag-cbor `{ claims: [{ envelope, remainingMs, decided }] }`: the live claims
 * it knows on that key (its own and its peers'), at most MAX_ANSWER_CLAIMS, each with
 * the lease it has left on the server's clock and whether its node granted it.
 */
export const CLAIMS_PROTOCOL = '/strata/claims/1.0.0'
/** When a connected peer did not answer a claim's push: how long to wait for a simultaneous claim on gossip before deciding who builds. */
export const CLAIM_SETTLE_MS = 500
/** How long a released claim's waiters wait for its record before being told it was released (the record travels on another topic). */
export const RELEASE_GRACE_MS = 1_000
/** A claim's push: one peer's answer time, the peers pushed to and how many at once. */
const ASK_TIMEOUT_MS = 1_500
const MAX_ASKED = 32
const ASK_CONCURRENCY = 8
const MAX_ANSWER_CLAIMS = 16
const MAX_ASK_REQUEST = MAX_CLAIM_SIZE + 256
const MAX_ANSWER = MAX_ANSWER_CLAIMS * (MAX_CLAIM_SIZE + 32) + 64
/** Control clients waiting on claims at once. */
const MAX_WAITERS = 1024
/** The longest one wait may last. */
export const MAX_WAIT_MS = 6 * 3600_000

export type ClaimOutcome = 'record' | 'released' | 'expired' | 'timeout'

export type ClaimAnswer =
  | { status: 'granted', id: string }
  /** `own`: this node's claim that lost to a simultaneous one; a client that signed it must release it. */
  | { status: 'held', holder: string, id: string, own?: string }

export interface ClaimsComponents {
  /** Signs this node's claims when its client has no writer key. */
  identity: Identity
  publish(topic: string, data: Uint8Array): Promise<unknown>
  handle(protocol: string, handler: StreamHandler, opts: { maxInboundStreams: number }): Promise<void>
  dialProtocol(peer: PeerId, protocol: string, opts: { signal: AbortSignal, negotiateFully?: boolean }): Promise<Stream>
  connectedPeers(): PeerId[]
  /** Whether this node holds a trusted record for `key` in one of `scopes`. */
  hasRecord(key: CID, scopes: readonly string[]): Promise<boolean>
  /** Monotonic milliseconds. Default performance.now(). */
  now?(): number
  logger: Logger
}

export interface ClaimsInit {
  trust: TrustPolicy
  /** Scopes whose claims a claim in another scope also waits for: the records this node reads. */
  readScopes: readonly string[]
  counters: ClaimCounters
  rejected: Partial<Record<RecordRejectReason, number>>
  /** How long to wait for gossip when a peer did not answer a push. Default CLAIM_SETTLE_MS. */
  settleMs?: number
  /** Default CLAIM_LEASE_MS: the lease of claims this node signs. */
  leaseMs?: number
}

interface Waiter {
  id: string
  scopes: readonly string[]
  done(outcome: ClaimOutcome): void
}

/** This node's claims whose client signs them (writer key): the daemon cannot sign a release for them. */
interface OwnState { signedByClient: boolean, lost: boolean, key: string }

/**
 * One build per key across the fleet: this node's claims (announced on gossip,
 * renewed each time its client renews, released when its client is done) and its
 * peers' (a bounded table, see ClaimTable). A client that claims a key someone else
 * holds is told who and can wait for the claim to settle: its record arrived, it was
 * released, or its lease expired.
 */
export class ClaimService {
  readonly table: ClaimTable
  readonly #c: ClaimsComponents
  readonly #init: ClaimsInit
  readonly #log: Logger
  readonly #now: () => number
  readonly #waiters = new Map<string, Set<Waiter>>()
  #waiting = 0
  readonly #own = new Map<string, OwnState>()
  #sweeper: NodeJS.Timeout | undefined

  constructor (components: ClaimsComponents, init: ClaimsInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger
    this.#now = components.now ?? (() => performance.now())
    this.table = new ClaimTable({ now: this.#now, ended: (l, how) => { this.#ended(l, how) }, logger: components.logger }, {
      trust: init.trust, self: components.identity.peerId, counters: init.counters, rejected: init.rejected
    })
  }

  async start (): Promise<void> {
    await this.#c.handle(CLAIMS_PROTOCOL, (stream, connection) => { void this.#serve(stream, connection.remotePeer.toString()) }, { maxInboundStreams: 8 })
    // Expiry is noticed within a second even when nothing asks.
    this.#sweeper = setInterval(() => { this.table.sweep() }, 500)
    this.#sweeper.unref()
  }

  stop (): void {
    clearInterval(this.#sweeper)
    for (const set of this.#waiters.values()) for (const w of set) w.done('timeout')
  }

  /** A message on CLAIMS_TOPIC. */
  announced (data: Uint8Array, from?: string): void {
    this.table.receive(data, { from })
  }

  /** A trusted record for `key` in `scope` is now in the store: whoever waits on a claim of that key is told. */
  recorded (key: CID, scope: string): void {
    const set = this.#waiters.get(key.toString())
    if (set === undefined) return
    for (const w of [...set]) if (w.scopes.includes(scope)) w.done('record')
  }

  /** The scopes a claim in `scope` waits for: its own, and those this node reads. */
  #scopes (scope: string): string[] {
    return [...new Set([scope, ...this.#init.readScopes])]
  }

  /**
   * Claims `key` for this node's client: granted when no live trusted claim on it
   * exists here or at a connected peer (each is handed this claim and answers what it
   * knows) and no claim made at the same moment wins; otherwise held by the winner. `envelope` is the
   * claim signed by the client's writer key (claimant: this node, seq 0); without it
   * the node's identity signs. Throws BadRequestError for an envelope that is not such a claim.
   */
  async claim (key: CID, scope: string, opts: { envelope?: Uint8Array, signal?: AbortSignal } = {}): Promise<ClaimAnswer> {
    const t0 = this.#now()
    const scopes = this.#scopes(scope)
    const k = key.toString()
    let claim: StepClaim
    let envelope: Uint8Array
    if (opts.envelope !== undefined) {
      claim = this.#openOwn(opts.envelope, key, scope)
      if (claim.seq !== 0 || claim.release) throw new BadRequestError('a new claim has seq 0 and is no release')
      envelope = opts.envelope
    } else {
      claim = { v: CLAIM_FORMAT, key, claimant: this.#c.identity.peerId, writer: null, scope, epoch: this.#init.trust.epoch, id: randomBytes(CLAIM_ID_BYTES), leaseMs: this.#init.leaseMs ?? CLAIM_LEASE_MS, seq: 0, release: false }
      envelope = signClaim(claim, this.#c.identity)
    }
    const id = claimIdHex(claim.id)
    if (this.#own.has(id) || this.table.endOf(id) !== undefined) throw new BadRequestError(`claim ${id} was made already`)
    const held = (w: LiveClaim): ClaimAnswer & { status: 'held' } => {
      this.#init.counters.held++
      this.#log.info({ event: 'claim-held', key: k, holder: w.claim.claimant, id: w.id }, 'key held by another claim')
      return { status: 'held', holder: w.claim.claimant, id: w.id }
    }
    // This machine's runners claim the fleet only while they hold the key's claim file (an flock):
    // a claim of this node still live on the key is a runner's that lost that lock by dying.
    for (const l of this.table.live(k)) {
      if (!l.own) continue
      this.#log.info({ event: 'claim-superseded', key: k, id: l.id }, 'a claim of this node whose runner is gone is released for a new one')
      await this.#lose(l.id)
    }
    // Checked and registered in one turn: a claim a peer pushed to this node before
    // this point is seen here; one pushed after it finds this claim in the answer.
    const before = this.table.winner(k, scopes)
    if (before !== undefined) return held(before)
    this.#own.set(id, { signedByClient: opts.envelope !== undefined, lost: false, key: k })
    this.table.own(claim, envelope)
    this.#publish(envelope)
    const peers = this.#c.connectedPeers().slice(0, MAX_ASKED)
    try {
      // Each connected peer is handed the claim and answers with what it knows on the
      // key. Of two claims made at once, each node learns the other's: by the push
      // when it arrives before the receiver registers its own (the receiver is held),
      // else by the answer. A peer that did not answer may have missed it: claims
      // then meet on gossip within a short window, or both build (never wrong).
      const silent = peers.length === 0 ? 0 : await this.#pushPeers(envelope, key, peers, opts.signal)
      const settleMs = silent > 0 ? this.#init.settleMs ?? CLAIM_SETTLE_MS : 0
      if (settleMs > 0) await sleep(settleMs, undefined, opts.signal !== undefined ? { signal: opts.signal } : {})
    } catch (err) {
      await this.#lose(id)
      throw err
    }
    const winner = this.table.winner(k, scopes)
    if (winner === undefined || winner.id === id) {
      // Not live any more only if settling outlasted its lease: nobody else holds the key either.
      let live = winner
      if (live === undefined) {
        this.#own.set(id, { signedByClient: opts.envelope !== undefined, lost: false, key: k })
        live = this.table.own(claim, envelope)
      }
      live.decided = true
      this.#init.counters.granted++
      this.#log.info({ event: 'claim-granted', key: k, id, scope, peers: peers.length, ms: Math.round(this.#now() - t0) }, 'claim granted: this node builds the key')
      return { status: 'granted', id }
    }
    const lost = this.#own.get(id)!
    await this.#lose(id)
    const answer = held(winner)
    return lost.signedByClient ? { ...answer, own: id } : answer
  }

  /** This node's claim lost or was abandoned: released now when the node signs it, else when its client sends the signed release. */
  async #lose (id: string): Promise<void> {
    const own = this.#own.get(id)
    if (own === undefined) return
    if (!own.signedByClient) {
      await this.release(id)
      return
    }
    own.lost = true
    this.table.remove(id, 'released')
    // Peers forget it within its lease; so does this node, if its client never sends the release.
    setTimeout(() => { if (this.#own.get(id)?.lost === true) this.#own.delete(id) }, MAX_LEASE_MS).unref()
  }

  /**
   * The client still holds claim `id`: it lives another lease, announced with the
   * next sequence number (`envelope`: that renewal signed by the client's writer
   * key). Throws ClaimNotFoundError when the claim ended (its lease ran out).
   */
  async renew (id: string, opts: { envelope?: Uint8Array } = {}): Promise<void> {
    const own = this.#own.get(id)
    const live = this.table.get(id)
    if (own === undefined || own.lost || live === undefined) throw new ClaimNotFoundError(id)
    let claim: StepClaim
    let envelope: Uint8Array
    if (own.signedByClient) {
      if (opts.envelope === undefined) throw new BadRequestError('this claim was signed by a writer key: its renewals must be too')
      claim = this.#openOwn(opts.envelope, live.claim.key, live.claim.scope)
      if (claimIdHex(claim.id) !== id || claim.release || claim.seq <= live.claim.seq) throw new BadRequestError(`not a renewal of claim ${id} after seq ${live.claim.seq}`)
      envelope = opts.envelope
    } else {
      claim = { ...live.claim, seq: live.claim.seq + 1 }
      envelope = signClaim(claim, this.#c.identity)
    }
    this.table.own(claim, envelope)
    this.#publish(envelope)
  }

  /** The client is done with claim `id` (built or failed): peers stop counting it now. Releasing an ended claim does nothing. */
  async release (id: string, opts: { envelope?: Uint8Array, outcome?: string } = {}): Promise<void> {
    const own = this.#own.get(id)
    if (own === undefined) return
    const live = this.table.get(id)
    let envelope: Uint8Array
    if (own.signedByClient) {
      if (opts.envelope === undefined) throw new BadRequestError('this claim was signed by a writer key: its release must be too')
      const claim = this.#openOwn(opts.envelope, CID.parse(own.key), undefined)
      if (claimIdHex(claim.id) !== id || !claim.release) throw new BadRequestError(`not a release of claim ${id}`)
      envelope = opts.envelope
    } else if (live !== undefined) {
      envelope = signClaim({ ...live.claim, seq: live.claim.seq + 1, release: true }, this.#c.identity)
    } else {
      // Expired already: peers forgot it on their own.
      this.#own.delete(id)
      return
    }
    this.#own.delete(id)
    this.table.remove(id, 'released')
    this.#publish(envelope)
    this.#log.info({ event: 'claim-released', key: own.key, id, outcome: opts.outcome, own: true }, 'claim released')
  }

  /**
   * Waits until claim `id` on `key` settles: a trusted record for `key` in one of
   * the scopes `scope` reads arrived ('record'), the claim was released ('released')
   * or expired ('expired'), or `timeoutMs` passed ('timeout'). Rejects with the
   * signal's reason when it aborts. Throws ClaimsBusyError when too many wait.
   */
  async wait (key: CID, scope: string, id: string, opts: { timeoutMs: number, signal?: AbortSignal }): Promise<ClaimOutcome> {
    if (this.#waiting >= MAX_WAITERS) throw new ClaimsBusyError(`${this.#waiting} clients wait on claims already`)
    const k = key.toString()
    const scopes = this.#scopes(scope)
    let set = this.#waiters.get(k)
    if (set === undefined) this.#waiters.set(k, set = new Set())
    const waiters = set
    this.#waiting++
    let waiter: Waiter | undefined
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    try {
      return await new Promise<ClaimOutcome>((resolve, reject) => {
        waiter = { id, scopes, done: resolve }
        waiters.add(waiter)
        timer = setTimeout(() => resolve('timeout'), Math.min(Math.max(0, opts.timeoutMs), MAX_WAIT_MS))
        onAbort = () => reject(opts.signal!.reason)
        if (opts.signal?.aborted === true) onAbort()
        opts.signal?.addEventListener('abort', onAbort, { once: true })
        // What happened before the wait began: the record is here, or the claim is gone.
        void this.#c.hasRecord(key, scopes).then((has) => {
          if (has) resolve('record')
          else if (this.table.get(id) === undefined) this.#settleEnded(waiter!, key, this.table.endOf(id) ?? 'expired')
        }, reject)
      })
    } finally {
      clearTimeout(timer)
      if (onAbort !== undefined) opts.signal?.removeEventListener('abort', onAbort)
      waiters.delete(waiter!)
      if (waiters.size === 0 && this.#waiters.get(k) === waiters) this.#waiters.delete(k)
      this.#waiting--
    }
  }

  #ended (live: LiveClaim, how: ClaimEnd): void {
    if (live.own && how === 'expired') this.#own.delete(live.id)
    const set = this.#waiters.get(live.key)
    if (set === undefined) return
    for (const w of set) if (w.id === live.id) this.#settleEnded(w, live.claim.key, how)
  }

  /** A released claim's record may still be on its way: its waiters get it if it lands within RELEASE_GRACE_MS. */
  #settleEnded (w: Waiter, key: CID, how: ClaimEnd): void {
    if (how === 'expired') {
      w.done('expired')
      return
    }
    const t = setTimeout(() => {
      void this.#c.hasRecord(key, w.scopes).then((has) => w.done(has ? 'record' : 'released'), () => w.done('released'))
    }, RELEASE_GRACE_MS)
    t.unref()
  }

  /** A claim signed by this node's client: about this node, this key and scope (any scope when undefined), trusted. */
  #openOwn (envelope: Uint8Array, key: CID, scope: string | undefined): StepClaim {
    let claim: StepClaim
    try {
      claim = openClaim(envelope, this.#init.trust, key)
    } catch (err) {
      if (!(err instanceof ClaimInvalidError)) throw err
      throw new BadRequestError(`the claim sent is refused: ${err.message}`, { cause: err })
    }
    if (claim.claimant !== this.#c.identity.peerId) throw new BadRequestError(`the claim names claimant ${claim.claimant}, not this node (${this.#c.identity.peerId})`)
    if (scope !== undefined && claim.scope !== scope) throw new BadRequestError(`the claim is in scope ${claim.scope}, not ${scope}`)
    return claim
  }

  #publish (envelope: Uint8Array): void {
    void this.#c.publish(CLAIMS_TOPIC, envelope).catch((err: unknown) => this.#log.debug({ err }, 'claim publish failed'))
  }

  /**
   * Hands this node's claim `envelope` on `key` to `peers` (a few at a time); what they
   * answer goes into the table. Returns how many did not answer.
   */
  async #pushPeers (envelope: Uint8Array, key: CID, peers: PeerId[], signal?: AbortSignal): Promise<number> {
    const queue = [...peers]
    let silent = 0
    const worker = async (): Promise<void> => {
      for (let p = queue.shift(); p !== undefined; p = queue.shift()) {
        if (signal?.aborted === true) return
        try {
          const answers = await this.#push(p, key, envelope, AbortSignal.any([AbortSignal.timeout(ASK_TIMEOUT_MS), ...(signal !== undefined ? [signal] : [])]))
          for (const a of answers) this.table.receive(a.envelope, { remainingMs: a.remainingMs, decided: a.decided, from: p.toString() })
        } catch (err) {
          silent++
          this.#log.debug({ err, peer: p.toString() }, 'claim push failed')
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(ASK_CONCURRENCY, peers.length) }, worker))
    if (signal?.aborted === true) throw signal.reason
    return silent
  }

  async #push (peer: PeerId, key: CID, envelope: Uint8Array, signal: AbortSignal): Promise<ClaimAnswerEntry[]> {
    const stream = await this.#c.dialProtocol(peer, CLAIMS_PROTOCOL, { signal, negotiateFully: false })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_ANSWER })
      await lp.write(dagCbor.encode({ key, claim: envelope }), { signal })
      const answer = decodeClaimAnswer((await lp.read({ signal })).subarray())
      await stream.close({ signal }).catch(() => {})
      return answer
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }

  async #serve (stream: Stream, from: string): Promise<void> {
    try {
      const signal = AbortSignal.timeout(5_000)
      const lp = lpStream(stream, { maxDataLength: MAX_ASK_REQUEST, maxBufferSize: 4 * MAX_ASK_REQUEST })
      const ask = decodeClaimAsk((await lp.read({ signal })).subarray())
      // The asker's claim is known before the answer is made: see claim().
      if (ask.claim !== undefined) this.table.receive(ask.claim, { from })
      const now = this.#now()
      const claims = this.table.live(ask.key.toString()).filter((l) => !(l.own && this.#own.get(l.id)?.lost === true)).slice(0, MAX_ANSWER_CLAIMS)
      await lp.write(dagCbor.encode({ claims: claims.map((l) => ({ envelope: l.envelope, remainingMs: Math.max(0, Math.round(l.expiresAt - now)), decided: l.decided })) }), { signal })
      await stream.close({ signal })
    } catch (err) {
      this.#log.debug({ err }, 'claim stream aborted')
      stream.abort(err as Error)
    }
  }
}

export interface ClaimAnswerEntry { envelope: Uint8Array, remainingMs: number, decided: boolean }

/** A direct ask's request: the key, and the asker's claim on it. Throws ProtocolViolationError for anything else. */
export function decodeClaimAsk (bytes: Uint8Array): { key: CID, claim?: Uint8Array } {
  try {
    if (bytes.length > MAX_ASK_REQUEST) throw new Error(`${bytes.length} bytes, over ${MAX_ASK_REQUEST}`)
    const m = dagCbor.decode<{ key?: unknown, claim?: unknown }>(bytes)
    const key = CID.asCID(m.key)
    if (key === null) throw new Error('no key')
    if (m.claim === undefined) return { key }
    if (!(m.claim instanceof Uint8Array) || m.claim.length > MAX_CLAIM_SIZE) throw new Error('the claim is not bytes of a claim\'s size')
    return { key, claim: m.claim }
  } catch (err) {
    throw new ProtocolViolationError('malformed claim ask', { cause: err })
  }
}

/** A direct ask's answer: up to MAX_ANSWER_CLAIMS claim envelopes with the lease left, and whether their node granted them. Throws ProtocolViolationError for anything else. */
export function decodeClaimAnswer (bytes: Uint8Array): ClaimAnswerEntry[] {
  try {
    const m = dagCbor.decode<{ claims?: unknown }>(bytes)
    if (!Array.isArray(m.claims) || m.claims.length > MAX_ANSWER_CLAIMS) throw new Error(`claims must be a list of at most ${MAX_ANSWER_CLAIMS}`)
    return m.claims.map((c: { envelope?: unknown, remainingMs?: unknown, decided?: unknown }) => {
      if (!(c.envelope instanceof Uint8Array) || c.envelope.length > MAX_CLAIM_SIZE) throw new Error('an envelope is not bytes of a claim\'s size')
      if (typeof c.remainingMs !== 'number' || !Number.isInteger(c.remainingMs) || c.remainingMs < 0 || c.remainingMs > MAX_LEASE_MS) throw new Error('remainingMs out of range')
      if (c.decided !== undefined && typeof c.decided !== 'boolean') throw new Error('decided is not a boolean')
      return { envelope: c.envelope, remainingMs: c.remainingMs, decided: c.decided === true }
    })
  } catch (err) {
    throw new ProtocolViolationError('malformed claim answer', { cause: err })
  }
}
