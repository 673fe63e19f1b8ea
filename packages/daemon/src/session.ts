import type { PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import type { Logger } from 'pino'
import { Uint8ArrayList } from 'uint8arraylist'
import { verifyBlock, BlockMismatchError } from '@strata/chunker'
import { BLOCKS_PROTOCOL_ZSTD, MAX_MESSAGE_SIZE, decodeMessage, encodeWant } from './codec.ts'
import type { Message } from './codec.ts'
import { DaemonError, PeerTimeoutError, ProtocolViolationError } from './errors.ts'
import type { ExchangeInit } from './exchange.ts'
import { FrameReader } from './frame-reader.ts'
import { appendFrame, sendRaw } from './wire.ts'

/** One block a fetch waits for. */
export interface Want {
  cid: CID
  key: string
  /** Providers that answered DONT_HAVE for it. */
  tried: Set<string>
  /** Failed requests (timeout, broken stream): they do not rule a provider out. */
  attempts: number
  /** Providers whose stream failed while it was asked: others are asked first. */
  failed: Set<string>
  done: boolean
  waiters: Array<{ resolve: (b: Uint8Array) => void, reject: (e: Error) => void }>
  /** Who fetches it from a full provider when peers fetching the same layer split it (a peer id, or '' for this node). */
  owner: string
  ownerVersion: number
  /** Made when a peer asks this node for the block while it is on its way. */
  landing?: PromiseWithResolvers<Uint8Array>
  /** The peer sharing the fetch that asked for it before this node's restore did: it is fetched for that peer. */
  forPeer?: string
  /** Why this fetch receiving it is a duplicate (it had the block before), when it is. */
  again?: string
}

/** A want nobody has been asked for yet. */
export function newWant (cid: CID, key = cid.toString()): Want {
  return { cid, key, tried: new Set(), attempts: 0, failed: new Set(), done: false, waiters: [], owner: '', ownerVersion: -1 }
}

/** What one fetch knows of one provider. */
export interface Provider {
  peer: PeerId
  key: string
  sessions: BlockSession[]
  opening: number
  blocks: number
  dontHaves: number
  /** Sessions in a row that failed before any answer came back (a block resets it). */
  failures: number
  /** No new session to it before this time (performance.now()): the backoff after a failed one. */
  retryAt: number
  /** Not asked again during this fetch: it has none of the layer, or cannot be reached. */
  dropped: boolean
  /** Fetching the same layer itself: asked only for the blocks it owns. */
  partial: boolean
}

/** What a session needs from the fetch it belongs to. */
export interface SessionHost {
  /** Fires when the fetch ends. */
  readonly signal: AbortSignal
  readonly init: Required<ExchangeInit>
  dialProtocol(peer: PeerId, protocols: string | string[], opts: { signal: AbortSignal }): Promise<Stream>
  /** The block protocols to offer, preferred first. */
  readonly protocols: string[]
  onWireBytes(n: number): void
  /** The session's stream is up: it joins the provider's pool and may be given wants. */
  opened(session: BlockSession): void
  /** Whether the fetch still has wants that `provider` has not said it lacks. */
  hasWorkFor(provider: Provider): boolean
  /** `provider` lacks `want`: it goes elsewhere. */
  dontHave(provider: Provider, want: Want): void
  /** `provider` sent bytes that do not hash to `want`'s CID. */
  wrongBlock(provider: Provider, want: Want): void
  /** `provider` sent what no honest peer sends (a malformed answer, a compression bomb): it is banned. */
  misbehaved(provider: Provider, reason: string): void
  /** `provider` sent `want`'s verified bytes. */
  received(provider: Provider, want: Want, bytes: Uint8Array): void
  /** `provider` sent `want`'s verified bytes once it was settled: they came twice. */
  duplicate(provider: Provider, want: Want): void
  /** Wants that must be asked again (their session failed). */
  requeue(want: Want): void
  /** Gather wants into batches soon. */
  schedule(): void
  logger: Logger
}

/** DONT_HAVEs without a single block after which a provider is taken to hold none of the layer. */
const DROP_AFTER_DONT_HAVES = 64
/** Sessions in a row that failed before any answer, after which a provider is given up for the fetch. */
const MAX_FAILURES = 3
/** The wait before a new session to a provider whose last one failed: doubled with each failure in a row. */
const RETRY_BASE_MS = 100
/**
 * How long a session with nothing asked waits for wants before it ends. Wants come in
 * bursts as a restore reads ahead; a session that ended at the first lull was opened
 * again at the next burst, and a fan-out opened many streams that never carried a
 * want-list.
 */
const SESSION_LINGER_MS = 1000
/**
 * Answers a fetching stream holds decoded and not yet read before it is reset. The
 * session reads each muxer chunk's answers before the next chunk is handed over,
 * so this is only reached by a peer that sends what nobody asked for.
 */
const CLIENT_QUEUED_BYTES = 16 * 1024 * 1024
/** The most one answer takes on the wire before compression: a frame and its length prefix. */
const MAX_ANSWER_BYTES = MAX_MESSAGE_SIZE + 8
/** Errors of what a peer sent, as opposed to how the stream went: the peer is banned. */
const MISBEHAVIOUR = new Set(['ERR_PROTOCOL_VIOLATION', 'ERR_PEER_LIMIT', 'ERR_DECOMPRESSION', 'ERR_DECOMPRESSION_LIMIT'])

/**
 * One stream to one provider, carrying many want-lists (pipelined: answers come back
 * as the provider's lookups finish, matched by CID). Every block is verified before
 * it is handed over; a wrong one bans the provider. A session that fails sends its
 * wants elsewhere and counts against the provider.
 */
export class BlockSession {
  readonly provider: Provider
  /** Wants sent and not answered yet. */
  readonly inflight = new Map<string, Want>()
  dead = false
  readonly #host: SessionHost
  #send: (wants: Want[]) => void = () => {}

  constructor (host: SessionHost, provider: Provider) {
    this.#host = host
    this.provider = provider
  }

  /** Sends a want-list on this session's stream. */
  send (wants: Want[]): void {
    this.#send(wants)
  }

  /** Opens the stream and reads answers until the fetch ends or the session has nothing left to do. */
  async run (): Promise<void> {
    const host = this.#host
    const p = this.provider
    const k = p.key
    const log = host.logger
    let stream: Stream | undefined
    let frames: FrameReader | undefined
    let opened = false
    let answered = false
    const ms = host.init.firstByteTimeoutMs
    // One watchdog per session instead of a timer per frame: it fires when wants
    // are out and nothing has come back for `ms`.
    let lastAnswer = performance.now()
    const idle = new AbortController()
    const watchdog = setInterval(() => {
      if (this.inflight.size > 0 && performance.now() - lastAnswer > ms) idle.abort(new PeerTimeoutError(`peer ${k} sent nothing for ${ms} ms`))
    }, Math.max(10, Math.min(1000, ms / 4)))
    const readSignal = AbortSignal.any([host.signal, idle.signal])
    try {
      const dialSignal = AbortSignal.any([host.signal, AbortSignal.timeout(ms)])
      stream = await host.dialProtocol(p.peer, host.protocols, { signal: dialSignal })
      const s = stream
      // Compressed answers may expand to at most what was asked: a frame per want.
      let asked = 0
      const inflate = s.protocol === BLOCKS_PROTOCOL_ZSTD ? { allowance: () => asked * MAX_ANSWER_BYTES } : undefined
      frames = new FrameReader(s, { maxDataLength: MAX_MESSAGE_SIZE, maxQueued: CLIENT_QUEUED_BYTES, onBytes: host.onWireBytes, ...(inflate !== undefined ? { inflate } : {}) })
      let wake: (() => void) | undefined
      let writing = Promise.resolve()
      this.#send = (wants) => {
        if (this.inflight.size === 0) lastAnswer = performance.now()
        for (const w of wants) this.inflight.set(w.key, w)
        asked += wants.length
        const out = new Uint8ArrayList()
        appendFrame(out, encodeWant(wants.map((w) => w.cid)))
        writing = writing.then(async () => { await sendRaw(s, out, host.init.idleTimeoutMs, host.signal) })
        writing.catch(() => {})
        wake?.()
      }
      p.opening--
      opened = true
      host.opened(this)
      let idleSince = performance.now()
      while (!host.signal.aborted) {
        if (this.inflight.size === 0) {
          // Nothing asked: wait for wants, or end the session when it has waited long enough with nothing left to do for it.
          if (p.dropped || (performance.now() - idleSince >= SESSION_LINGER_MS && !host.hasWorkFor(p))) break
          const { promise, resolve } = Promise.withResolvers<void>()
          wake = resolve
          const timer = setTimeout(resolve, 50)
          await promise
          clearTimeout(timer)
          wake = undefined
          continue
        }
        let frame
        try {
          frame = await frames.next(readSignal)
        } catch (err) {
          if (err instanceof DaemonError && MISBEHAVIOUR.has(err.code)) host.misbehaved(p, err.message)
          throw err
        }
        if (frame === undefined) throw new ProtocolViolationError(`peer ${k} closed the stream with ${this.inflight.size} wants unanswered`)
        lastAnswer = performance.now()
        answered = true
        const whole = frame.subarray()
        let msg: Exclude<Message, { type: 'want' }>
        try {
          const m = decodeMessage(whole)
          if (m.type === 'want') throw new ProtocolViolationError('a server sent a want-list')
          if (!this.inflight.has(m.cid.toString())) throw new ProtocolViolationError(`peer ${k} answered a block it was not asked for`)
          msg = m
        } catch (err) {
          host.misbehaved(p, (err as Error).message)
          throw err
        }
        const w = this.inflight.get(msg.cid.toString())!
        this.inflight.delete(w.key)
        if (this.inflight.size === 0) idleSince = performance.now()
        if (msg.type === 'dont-have') {
          // Only this node's own wants tell whether the provider holds the layer: a
          // block fetched for a sharing peer may be one of another layer.
          if (w.waiters.length > 0) p.dontHaves++
          if (p.blocks === 0 && p.dontHaves >= DROP_AFTER_DONT_HAVES && !p.dropped && !p.partial) {
            p.dropped = true
            log.debug({ peer: k, dontHaves: p.dontHaves }, 'provider holds none of the layer; not asking it again')
          }
          host.dontHave(p, w)
          continue
        }
        try {
          verifyBlock(w.cid, msg.bytes)
        } catch (err) {
          if (!(err instanceof BlockMismatchError)) throw err
          host.wrongBlock(p, w)
          throw err
        }
        p.blocks++
        p.failures = 0
        if (w.done) {
          host.duplicate(p, w)
          continue
        }
        // A message that came in several pieces was joined into memory of its own and
        // is kept as it is; one that is a view of a buffer shared with others is copied.
        const own = whole.byteOffset === 0 && whole.buffer.byteLength === whole.byteLength
        host.received(p, w, own ? msg.bytes : Uint8Array.prototype.slice.call(msg.bytes))
        if (this.inflight.size <= host.init.wantBatch) host.schedule()
      }
      this.dead = true
      await writing
      await stream.close({ signal: AbortSignal.timeout(host.init.idleTimeoutMs) }).catch(() => {})
    } catch (err) {
      log.debug({ err, peer: k, left: this.inflight.size }, 'block session failed; asking elsewhere')
      stream?.abort(err as Error)
      // A session that failed before any answer (a peer gone, a stream refused) counts
      // against the provider and delays the next one, so that a dead peer is not dialled
      // in a loop; a few such failures in a row drop it for this fetch.
      if (!answered) {
        p.failures++
        p.retryAt = performance.now() + RETRY_BASE_MS * 2 ** (p.failures - 1)
        if (p.failures >= MAX_FAILURES && !p.dropped) {
          p.dropped = true
          log.debug({ peer: k, failures: p.failures }, 'provider keeps failing; not asking it again')
        }
      }
    } finally {
      clearInterval(watchdog)
      frames?.close()
      this.dead = true
      if (!opened) p.opening--
      // Only failures count against a block: a DONT_HAVE just sends it elsewhere.
      for (const w of this.inflight.values()) {
        if (w.done) continue
        w.attempts++
        w.failed.add(k)
        host.requeue(w)
      }
      this.inflight.clear()
      p.sessions = p.sessions.filter((x) => x !== this)
    }
  }
}
