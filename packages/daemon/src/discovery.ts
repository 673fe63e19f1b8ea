import { lookup, Resolver } from 'node:dns/promises'
import { isIP } from 'node:net'
import type { Connection, PeerId } from '@libp2p/interface'
import { CODE_P2P, multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'

/** Addresses one bootstrap entry may resolve to; the rest are ignored. */
export const MAX_RESOLVED_ADDRESSES = 64
/** `/dnsaddr/` records that point at other `/dnsaddr/` names, followed this deep. */
export const MAX_DNSADDR_DEPTH = 4
/** Dials one discovery round has in flight at once. */
const DIAL_CONCURRENCY = 8
const DIAL_TIMEOUT_MS = 5000
const DNS_TIMEOUT_MS = 2000
/** A node with no peer dials again this soon, doubling up to the interval. */
const ALONE_RETRY_MS = 1000

const HOST_PROTOCOLS = new Set(['ip4', 'ip6', 'dns', 'dns4', 'dns6', 'dnsaddr'])

/**
 * Checks a bootstrap address: `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/ID]` or
 * `/dnsaddr/NAME[/p2p/ID]`. Throws TypeError saying what is wrong.
 */
export function checkBootstrapAddress (addr: string): Multiaddr {
  let ma: Multiaddr
  try {
    ma = multiaddr(addr)
  } catch (err) {
    throw new TypeError(`${JSON.stringify(addr)} is not a multiaddr: ${(err as Error).message}`, { cause: err })
  }
  const parts = ma.getComponents().map((c) => c.name)
  const [first, second] = parts
  if (first === undefined || !HOST_PROTOCOLS.has(first)) throw new TypeError(`${JSON.stringify(addr)} must start with /ip4, /ip6, /dns, /dns4, /dns6 or /dnsaddr`)
  const rest = first === 'dnsaddr' ? parts.slice(1) : parts.slice(2)
  if (first !== 'dnsaddr' && second !== 'tcp') throw new TypeError(`${JSON.stringify(addr)} needs /tcp/PORT after its host`)
  if (rest.length > 1 || (rest.length === 1 && rest[0] !== 'p2p')) throw new TypeError(`${JSON.stringify(addr)} may end only with /p2p/<peer id>`)
  return ma
}

/** Checks `IP` or `IP:PORT` (`[IPv6]:PORT`) for a DNS server; returns it in node:dns's form. */
export function checkDnsServer (server: string): string {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(server) ?? /^([^:]+):(\d+)$/.exec(server)
  const host = m?.[1] ?? server
  const port = m?.[2] !== undefined ? Number(m[2]) : 53
  if (isIP(host) === 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new TypeError(`${JSON.stringify(server)} is not IP or IP:PORT (an IPv6 address with a port in brackets: [::1]:53)`)
  return server
}

/** What discovery needs from the libp2p node. */
export interface DiscoveryComponents {
  peerId: PeerId
  dial: (addr: Multiaddr, opts: { signal: AbortSignal }) => Promise<Connection>
  /** Whether this node has a connection open to the peer. */
  connected: (peer: string) => boolean
  /** The node's own addresses, never dialled. */
  ownAddresses: () => Multiaddr[]
  /** Peers the node is connected to now; a node with none retries sooner than the interval. */
  peerCount?: () => number
  logger: Logger
}

export interface DiscoveryInit {
  /** Checked bootstrap addresses (`checkBootstrapAddress`). */
  bootstrap: string[]
  /** Milliseconds between rounds; 0: one round at start only. */
  intervalMs: number
  /** DNS server (`IP` or `IP:PORT`) for DNS names; default the system's resolver. */
  dnsServer?: string
  /** Longest wait for one dial (default 5 000 ms); a dial still pending past it no longer holds the round. */
  dialTimeoutMs?: number
}

type Resolved = { addrs: Multiaddr[], error?: string }

/**
 * The bootstrap list, resolved and dialled at start and again every `intervalMs`:
 * every A/AAAA record of a DNS name, every `dnsaddr=` TXT record of a `/dnsaddr/`
 * name, addresses with or without `/p2p/<peer id>` (Noise tells who answered). A
 * fleet whose VMs were all replaced finds itself again through the names.
 */
export class Discovery {
  readonly #c: DiscoveryComponents
  readonly #init: DiscoveryInit
  readonly #log: Logger
  readonly #resolver: Resolver
  /** Who answered on an address without a peer id, so that a connected peer is not dialled again. */
  readonly #learned = new Map<string, string>()
  /** Last error per entry, so that a name that keeps failing is logged at warn once. */
  readonly #lastError = new Map<string, string>()
  #stop: AbortController | undefined
  #timer: NodeJS.Timeout | undefined
  #round: Promise<void> | undefined
  /** Wait before the next round while the node has no peer (doubling), and whether the node was alone after the last round. */
  #aloneRetryMs = ALONE_RETRY_MS
  #alone = false
  /** Why each dial of the last round failed, for the warning of a node left alone. */
  readonly #dialErrors = new Map<string, string>()
  /** Rounds made (tests and logs). */
  rounds = 0

  constructor (components: DiscoveryComponents, init: DiscoveryInit) {
    this.#c = components
    this.#init = init
    this.#log = components.logger.child({ component: 'discovery' })
    this.#resolver = new Resolver({ timeout: DNS_TIMEOUT_MS, tries: 2 })
    if (init.dnsServer !== undefined) this.#resolver.setServers([init.dnsServer])
  }

  start (): void {
    if (this.#stop !== undefined || this.#init.bootstrap.length === 0) return
    this.#stop = new AbortController()
    this.#schedule(0)
  }

  async stop (): Promise<void> {
    this.#stop?.abort(new Error('discovery stopping'))
    this.#stop = undefined
    clearTimeout(this.#timer)
    this.#resolver.cancel()
    await this.#round
  }

  #schedule (ms: number): void {
    const stop = this.#stop
    if (stop === undefined) return
    this.#timer = setTimeout(() => {
      this.#round = this.round(stop.signal).catch((err: unknown) => this.#log.warn({ err }, 'discovery round failed')).finally(() => {
        this.#round = undefined
        if (stop.signal.aborted) return
        const alone = (this.#c.peerCount?.() ?? 1) === 0
        this.#noteAlone(alone)
        // A node without a peer (its bootstrap peers not up yet, or all gone) tries
        // again within seconds rather than a whole interval, backing off to it.
        if (alone && this.#init.intervalMs > 0) {
          this.#schedule(Math.min(this.#aloneRetryMs, this.#init.intervalMs))
          this.#aloneRetryMs *= 2
          return
        }
        this.#aloneRetryMs = ALONE_RETRY_MS
        if (this.#init.intervalMs > 0) this.#schedule(this.#init.intervalMs)
      })
    }, ms)
  }

  /** A node left without any peer says so once, with why each bootstrap dial failed; and once when it has peers again. */
  #noteAlone (alone: boolean): void {
    if (alone && !this.#alone) this.#log.warn({ event: 'bootstrap-alone', rounds: this.rounds, failures: Object.fromEntries(this.#dialErrors) }, 'no peer after a bootstrap round')
    else if (!alone && this.#alone) this.#log.info({ event: 'bootstrap-joined', rounds: this.rounds, peers: this.#c.peerCount?.() }, 'peers again after bootstrap rounds')
    this.#alone = alone
  }

  /** One round: resolve every entry, dial each address not connected yet. */
  async round (signal: AbortSignal): Promise<void> {
    this.rounds++
    this.#dialErrors.clear()
    const own = new Set(this.#c.ownAddresses().map(key))
    const targets = new Map<string, Multiaddr>()
    for (const entry of this.#init.bootstrap) {
      if (signal.aborted) return
      const { addrs, error } = await this.resolve(multiaddr(entry), signal)
      if (error !== undefined && this.#lastError.get(entry) !== error) this.#log.warn({ address: entry, error }, 'bootstrap address does not resolve')
      else if (error === undefined && this.#lastError.has(entry)) this.#log.info({ address: entry, addresses: addrs.length }, 'bootstrap address resolves again')
      if (error !== undefined) this.#lastError.set(entry, error)
      else this.#lastError.delete(entry)
      for (const a of addrs) if (!own.has(key(a))) targets.set(a.toString(), a)
    }
    const queue = [...targets.values()]
    const worker = async (): Promise<void> => {
      for (let a = queue.shift(); a !== undefined && !signal.aborted; a = queue.shift()) await this.#dial(a, signal)
    }
    await Promise.all(Array.from({ length: Math.min(DIAL_CONCURRENCY, queue.length) }, worker))
  }

  async #dial (addr: Multiaddr, signal: AbortSignal): Promise<void> {
    const k = key(addr)
    const named = addr.getComponents().find((c) => c.code === CODE_P2P)?.value
    const known = named ?? this.#learned.get(k)
    if (known === this.#c.peerId.toString()) return
    if (known !== undefined && this.#c.connected(known)) return
    const ms = this.#init.dialTimeoutMs ?? DIAL_TIMEOUT_MS
    const timeout = AbortSignal.timeout(ms)
    // A dial that does not settle when its signal fires must not hold the round, and
    // with it every later round: the node would never dial its bootstrap list again.
    let timer: NodeJS.Timeout | undefined
    const overdue = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`dial still pending ${ms + 1000} ms after it started`)) }, ms + 1000) })
    try {
      const conn = await Promise.race([this.#c.dial(addr, { signal: AbortSignal.any([signal, timeout]) }), overdue])
      if (named === undefined) this.#learned.set(k, conn.remotePeer.toString())
      this.#log.debug({ address: addr.toString(), peer: conn.remotePeer.toString() }, 'bootstrap peer connected')
    } catch (err) {
      // A VM replaced on the same address has another identity: learn it anew.
      this.#learned.delete(k)
      if (this.#dialErrors.size < MAX_RESOLVED_ADDRESSES) this.#dialErrors.set(addr.toString(), (err as Error).message)
      this.#log.debug({ err, address: addr.toString() }, 'bootstrap dial failed')
    } finally {
      clearTimeout(timer)
    }
  }

  /** The dialable addresses an entry stands for now (DNS names looked up). */
  async resolve (ma: Multiaddr, signal: AbortSignal, depth = 0): Promise<Resolved> {
    const [head, ...tail] = ma.getComponents()
    if (head === undefined) return { addrs: [] }
    const suffix = tail.map((c) => `/${c.name}${c.value !== undefined ? `/${c.value}` : ''}`).join('')
    try {
      if (head.name === 'ip4' || head.name === 'ip6') return { addrs: [ma] }
      const name = head.value ?? ''
      if (head.name === 'dnsaddr') return await this.#dnsaddr(name, suffix, signal, depth)
      const ips: Array<{ address: string, family: number }> = []
      if (head.name !== 'dns6') ips.push(...(await this.#lookup(name, 4)).map((address) => ({ address, family: 4 })))
      if (head.name !== 'dns4') ips.push(...(await this.#lookup(name, 6)).map((address) => ({ address, family: 6 })))
      const addrs = ips.slice(0, MAX_RESOLVED_ADDRESSES).map((ip) => multiaddr(`/ip${ip.family}/${ip.address}${suffix}`))
      return addrs.length > 0 ? { addrs } : { addrs, error: `${name} has no ${head.name === 'dns6' ? 'AAAA' : head.name === 'dns4' ? 'A' : 'A or AAAA'} record` }
    } catch (err) {
      if (signal.aborted) return { addrs: [] }
      return { addrs: [], error: `${(err as NodeJS.ErrnoException).code ?? (err as Error).message} looking up ${head.value ?? ''}` }
    }
  }

  /** A or AAAA records; missing ones are no error (a name may have only one kind). */
  async #lookup (name: string, family: 4 | 6): Promise<string[]> {
    try {
      if (this.#init.dnsServer !== undefined) return family === 4 ? await this.#resolver.resolve4(name) : await this.#resolver.resolve6(name)
      // The system's resolver: /etc/hosts and nsswitch too, as any other program on the VM.
      return (await lookup(name, { all: true, family })).map((r) => r.address)
    } catch (err) {
      if (['ENODATA', 'ENOTFOUND', 'EAI_NODATA', 'EAI_NONAME'].includes((err as NodeJS.ErrnoException).code ?? '')) return []
      throw err
    }
  }

  /** `/dnsaddr/NAME`: the `dnsaddr=MULTIADDR` TXT records of `_dnsaddr.NAME` (multiaddr.io's dnsaddr). */
  async #dnsaddr (name: string, suffix: string, signal: AbortSignal, depth: number): Promise<Resolved> {
    if (depth >= MAX_DNSADDR_DEPTH) return { addrs: [], error: `/dnsaddr/${name} nests deeper than ${MAX_DNSADDR_DEPTH}` }
    let records: string[][]
    try {
      records = await this.#resolver.resolveTxt(`_dnsaddr.${name}`)
    } catch (err) {
      if (['ENODATA', 'ENOTFOUND'].includes((err as NodeJS.ErrnoException).code ?? '')) return { addrs: [], error: `_dnsaddr.${name} has no TXT record` }
      throw err
    }
    const wanted = /^\/p2p\/([^/]+)$/.exec(suffix)?.[1]
    const out: Multiaddr[] = []
    let error: string | undefined
    for (const chunks of records.slice(0, MAX_RESOLVED_ADDRESSES)) {
      const txt = chunks.join('')
      if (!txt.startsWith('dnsaddr=')) continue
      let target: Multiaddr
      try {
        target = checkBootstrapAddress(txt.slice('dnsaddr='.length))
      } catch (err) {
        error = `_dnsaddr.${name}: ${(err as Error).message}`
        continue
      }
      // `/dnsaddr/NAME/p2p/ID` keeps only the records of that peer.
      if (wanted !== undefined && target.getComponents().find((c) => c.code === CODE_P2P)?.value !== wanted) continue
      const r = await this.resolve(target, signal, depth + 1)
      error ??= r.error
      out.push(...r.addrs)
      if (out.length >= MAX_RESOLVED_ADDRESSES) break
    }
    const addrs = out.slice(0, MAX_RESOLVED_ADDRESSES)
    return addrs.length > 0 ? { addrs } : { addrs, error: error ?? `_dnsaddr.${name} has no dnsaddr= record${wanted !== undefined ? ` for ${wanted}` : ''}` }
  }
}

/** An address without its peer id: what a socket connects to. */
function key (ma: Multiaddr): string {
  return ma.decapsulateCode(CODE_P2P).toString()
}
