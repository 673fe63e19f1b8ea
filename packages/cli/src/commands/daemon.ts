import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import type { ParseArgsOptionsConfig } from 'node:util'
import { connectDaemon } from '@strata/daemon/client'
import type { Command, CommandContext } from '../context.ts'
import { count, dataDirOf, formatBytes, parseCommandArgs, UsageError } from '../context.ts'
import type { ArgValues } from '../context.ts'
import { sizeOption } from './gc.ts'

function parse (ctx: CommandContext, options: ParseArgsOptionsConfig): ArgValues {
  return parseCommandArgs(ctx, options, 0).values
}

/** A dialable address: libp2p already ends its own with /p2p/<id>. */
const withPeer = (addr: string, peerId: string): string => (addr.includes('/p2p/') ? addr : `${addr}/p2p/${peerId}`)

const list = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [])

/** Each value of a repeated flag through `check`; one that does not parse is a usage error naming the flag. */
function checkEach (flag: string, values: string[], what: string, check: (s: string) => unknown): void {
  for (const s of values) {
    try {
      check(s)
    } catch (err) {
      throw new UsageError(`--${flag}: ${JSON.stringify(s)} is not ${what}`, { cause: err })
    }
  }
}

/** The daemon's flags; a config file takes the same names as keys (and `data-dir`). */
export const DAEMON_OPTIONS = {
  listen: { type: 'string', multiple: true },
  bootstrap: { type: 'string', multiple: true },
  'bootstrap-interval': { type: 'string' },
  'dns-server': { type: 'string' },
  replicas: { type: 'string' },
  'metrics-listen': { type: 'string' },
  'trusted-writer': { type: 'string', multiple: true },
  mdns: { type: 'boolean' },
  'psk-file': { type: 'string' },
  'require-psk': { type: 'boolean' },
  'allow-peer': { type: 'string', multiple: true },
  'allow-peers-file': { type: 'string' },
  'trusted-writers-file': { type: 'string' },
  epoch: { type: 'string' },
  'read-scope': { type: 'string', multiple: true },
  'max-size': { type: 'string' },
  'hard-limit': { type: 'string' },
  // Bytes a second the background scrub re-reads layers at (default 20M); 0 turns it off.
  'scrub-rate': { type: 'string' }
} as const satisfies ParseArgsOptionsConfig

/** Config keys that name files, taken relative to the config file. */
const PATH_KEYS = ['data-dir', 'psk-file', 'allow-peers-file', 'trusted-writers-file']

/** Read when present and no --config is given. */
export const DEFAULT_DAEMON_CONFIG = '/etc/strata/daemon.yml'

/** The flags, over the config file's values (`--config FILE`, else DEFAULT_DAEMON_CONFIG when it exists). */
async function daemonArgs (ctx: CommandContext): Promise<ArgValues> {
  const flags = parse(ctx, { ...DAEMON_OPTIONS, config: { type: 'string' } })
  const file = typeof flags.config === 'string' ? flags.config : existsSync(DEFAULT_DAEMON_CONFIG) ? DEFAULT_DAEMON_CONFIG : undefined
  // YAML loads only for a daemon that has a config file (status and id share this module).
  const fromFile = file !== undefined ? await (await import('../config-file.ts')).readConfigFile(file, { 'data-dir': { type: 'string' }, ...DAEMON_OPTIONS }, PATH_KEYS) : {}
  const given = Object.fromEntries(Object.entries(flags).filter(([k, x]) => x !== undefined && k !== 'config'))
  return { ...fromFile, ...given }
}

export const daemon: Command = {
  name: 'daemon',
  summary: 'run the strata node: share layers with the fleet over libp2p; strata run uses it while it runs',
  usage: 'strata daemon [--config FILE] [--data-dir D] [--listen MULTIADDR]... [--bootstrap MULTIADDR]... [--bootstrap-interval SECONDS] [--dns-server IP[:PORT]] [--replicas N] [--metrics-listen HOST:PORT] [--mdns] ' +
    '[--psk-file FILE] [--require-psk] [--allow-peer PEERID]... [--allow-peers-file FILE] [--trusted-writer NAME-N:KEY|PEERID[@SCOPES]]... [--trusted-writers-file FILE] [--epoch N] [--read-scope S]... ' +
    '[--max-size SIZE [--hard-limit SIZE]] [--scrub-rate SIZE]',
  async run (ctx) {
    const v = await daemonArgs(ctx)
    const scrubRate = sizeOption(v, 'scrub-rate')
    const maxSize = sizeOption(v, 'max-size')
    const hardLimit = sizeOption(v, 'hard-limit')
    if (hardLimit !== undefined && (maxSize === undefined || hardLimit < maxSize)) throw new UsageError('--hard-limit needs --max-size, and must not be below it')
    let replicas: number | undefined
    if (typeof v.replicas === 'string') {
      replicas = Number(v.replicas)
      if (!Number.isInteger(replicas) || replicas < 0) throw new UsageError(`--replicas wants a whole number, got ${JSON.stringify(v.replicas)}`)
    }
    let bootstrapIntervalMs: number | undefined
    if (typeof v['bootstrap-interval'] === 'string') {
      const seconds = /^\d+(\.\d+)?$/.test(v['bootstrap-interval']) ? Number(v['bootstrap-interval']) : NaN
      if (!Number.isFinite(seconds)) throw new UsageError(`--bootstrap-interval wants seconds (0: resolve and dial at start only), got ${JSON.stringify(v['bootstrap-interval'])}`)
      bootstrapIntervalMs = Math.round(seconds * 1000)
    }
    const dnsServer = typeof v['dns-server'] === 'string' ? v['dns-server'] : undefined
    const envBootstrap = (process.env.STRATA_BOOTSTRAP ?? '').split(/[\s,]+/).filter((s) => s !== '')
    const listen = list(v.listen)
    const trusted = list(v['trusted-writer'])
    const allow = list(v['allow-peer'])
    const readScopes = list(v['read-scope'])
    const pskFile = typeof v['psk-file'] === 'string' ? v['psk-file'] : process.env.STRATA_PSK_FILE
    const metrics = v['metrics-listen']
    if (typeof metrics === 'string') {
      const port = metrics.lastIndexOf(':') > 0 ? Number(metrics.slice(metrics.lastIndexOf(':') + 1)) : NaN
      if (!/:\d+$/.test(metrics) || !Number.isInteger(port) || port > 65535) throw new UsageError(`--metrics-listen wants HOST:PORT, got ${JSON.stringify(metrics)}`)
    }
    let epoch: number | undefined
    if (typeof v.epoch === 'string') {
      epoch = /^\d+$/.test(v.epoch) ? Number(v.epoch) : NaN
      if (!Number.isSafeInteger(epoch) || epoch > 0xffffffff) throw new UsageError(`--epoch wants a whole number from 0 to 4294967295, got ${JSON.stringify(v.epoch)}`)
    }
    // libp2p loads only for the commands that run a node.
    const { createDaemon, peerIdOf, writerOf } = await import('@strata/daemon')
    const { checkScope } = await import('@strata/records')
    const { multiaddr } = await import('@multiformats/multiaddr')
    checkEach('listen', listen, 'a multiaddr (e.g. /ip4/0.0.0.0/tcp/7401)', multiaddr)
    checkEach('bootstrap', list(v.bootstrap), 'a multiaddr (e.g. /ip4/10.0.0.2/tcp/7401/p2p/PEERID)', multiaddr)
    checkEach('allow-peer', allow, 'a peer id or an ed25519 public key in hex', peerIdOf)
    checkEach('trusted-writer', trusted, 'a peer id or an ed25519 public key, optionally with @SCOPE-PATTERN', writerOf)
    checkEach('read-scope', readScopes, 'a scope (letters, digits, ".", "_", "+", "-", with "/" between parts)', checkScope)
    const node = await createDaemon({
      dataDir: dataDirOf(v),
      ...(listen.length > 0 ? { listen } : {}),
      bootstrap: [...list(v.bootstrap), ...envBootstrap],
      ...(bootstrapIntervalMs !== undefined ? { bootstrapIntervalMs } : {}),
      ...(dnsServer !== undefined ? { dnsServer } : {}),
      mdns: v.mdns === true,
      ...(replicas !== undefined ? { replicas } : {}),
      ...(scrubRate !== undefined ? { scrub: { bytesPerSecond: scrubRate } } : {}),
      ...(maxSize !== undefined ? { gc: { maxSize, ...(hardLimit !== undefined ? { hardLimit } : {}) } } : {}),
      ...(typeof v['metrics-listen'] === 'string' ? { metricsListen: v['metrics-listen'] } : {}),
      ...(trusted.length > 0 ? { trustedWriters: trusted } : {}),
      ...(allow.length > 0 ? { allowPeers: allow } : {}),
      ...(typeof v['allow-peers-file'] === 'string' ? { allowPeersFile: v['allow-peers-file'] } : {}),
      ...(typeof v['trusted-writers-file'] === 'string' ? { trustedWritersFile: v['trusted-writers-file'] } : {}),
      ...(pskFile !== undefined && pskFile !== '' ? { pskFile } : {}),
      requirePsk: v['require-psk'] === true,
      ...(epoch !== undefined ? { epoch } : {}),
      ...(readScopes.length > 0 ? { readScopes } : {}),
      logger: ctx.logger
    })
    await node.start()
    ctx.stderr.write(`strata daemon: peer ${node.peerId}\n`)
    for (const a of node.addresses) ctx.stderr.write(`  listening on ${withPeer(a, node.peerId)}\n`)
    if (node.metricsPort !== undefined) ctx.stderr.write(`  metrics on port ${node.metricsPort}\n`)
    if (node.privateNetwork) ctx.stderr.write(`  private network (pre-shared key ${pskFile ?? ''})\n`)
    if (!ctx.signal.aborted) await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }))
    ctx.stderr.write('strata daemon: stopping\n')
    await node.stop()
    return 0
  }
}

export const id: Command = {
  name: 'id',
  summary: 'print this node\'s peer id and, when the daemon runs, its listen addresses',
  usage: 'strata id [--data-dir D] [--json]',
  async run (ctx) {
    const v = parse(ctx, { json: { type: 'boolean', default: false } })
    const dataDir = dataDirOf(v)
    const client = await connectDaemon(dataDir, { signal: ctx.signal })
    let peerId: string
    let addresses: string[] = []
    if (client !== undefined) {
      try {
        const s = await client.status({ copies: false, signal: ctx.signal })
        peerId = s.peerId
        addresses = s.addresses.map((a) => withPeer(a, s.peerId))
      } finally {
        await client.close()
      }
    } else {
      const { loadPrivateKey } = await import('@strata/daemon')
      peerId = (await loadPrivateKey(dataDir, { signal: ctx.signal })).publicKey.toString()
    }
    if (v.json === true) ctx.stdout.write(JSON.stringify({ peerId, addresses }) + '\n')
    else ctx.stdout.write([peerId, ...addresses].join('\n') + '\n')
    return 0
  }
}

export const status: Command = {
  name: 'status',
  summary: 'show the daemon\'s peers, layers with the copies the fleet holds, and counters',
  usage: 'strata status [--data-dir D] [--json]',
  async run (ctx) {
    const v = parse(ctx, { json: { type: 'boolean', default: false } })
    const dataDir = dataDirOf(v)
    const client = await connectDaemon(dataDir, { signal: ctx.signal })
    if (client === undefined) {
      ctx.stderr.write(`strata status: no daemon answers on ${dataDir}/strata.sock (start one with strata daemon)\n`)
      return 1
    }
    try {
      const s = await client.status({ signal: ctx.signal })
      if (v.json === true) {
        ctx.stdout.write(JSON.stringify(s) + '\n')
        return 0
      }
      const c = s.counters
      ctx.stdout.write(`peer ${s.peerId}\n`)
      ctx.stdout.write(`peers: ${s.peers.length}${s.banned.length > 0 ? ` (${s.banned.length} banned)` : ''}\n`)
      for (const p of s.peers) ctx.stdout.write(`  ${p}\n`)
      ctx.stdout.write(`layers: ${s.layers.length}\n`)
      for (const l of s.layers) ctx.stdout.write(`  ${l.root}  ${formatBytes(l.size).padStart(8)}  ${l.copies < 0 ? '? copies' : count(l.copies, 'copy', 'copies')}\n`)
      ctx.stdout.write(`from peers: ${formatBytes(c.bytesFromPeers)} (${count(c.blocksFromPeers, 'block')}), to peers: ${formatBytes(c.bytesToPeers)} (${count(c.blocksToPeers, 'block')})\n`)
      ctx.stdout.write(`blocks rejected: ${c.blocksRejected}, records learned: ${c.recordsLearned}, rejected: ${c.recordsRejected}, layers replicated: ${c.replicated}\n`)
      const reasons = Object.entries(s.recordsRejected ?? {}).map(([r, n]) => `${r} ${n}`)
      if (reasons.length > 0) ctx.stdout.write(`  records rejected by reason: ${reasons.join(', ')}\n`)
      ctx.stdout.write(`trust: epoch ${s.epoch ?? 0}, writers ${s.trustedWriters === null ? 'any' : s.trustedWriters.length}, ${s.privateNetwork === true ? 'private network' : 'open network'}\n`)
      // The fleet view: how steps were served, what this node learned on reconnecting, what it costs.
      if (s.hits !== undefined) {
        const recent = s.recentHits ?? []
        const by = (src: string): number => recent.filter((h) => h.source === src).length
        ctx.stdout.write(`steps: ${s.hits.local} local, ${s.hits.peer} from peers, ${s.hits.miss} missed; last ${recent.length}: ${by('local')} local, ${by('peer')} peer, ${by('miss')} miss\n`)
      }
      if (s.recordSync !== undefined) ctx.stdout.write(`records synced on connect: ${s.recordSync.recordsSynced} in ${s.recordSync.syncs} syncs\n`)
      if (s.claims !== undefined) {
        const k = s.claims
        const why = Object.entries(k.rejectedBy).map(([r, n]) => `${r} ${n}`)
        ctx.stdout.write(`claims: ${k.granted} granted, ${k.held} held by peers, ${k.expired} of peers expired, ${k.rejected} rejected${why.length > 0 ? ` (${why.join(', ')})` : ''}, ${k.live} live\n`)
      }
      if (s.process !== undefined) {
        const m = s.process.malloc
        const native = m !== undefined ? `, malloc ${formatBytes(m.inUse)} in use and ${formatBytes(m.free)} free` : ''
        ctx.stdout.write(`process: rss ${formatBytes(s.process.rss)}, heap ${formatBytes(s.process.heapUsed)} of ${formatBytes(s.process.heapTotal)}${native}, ${s.process.fds} fds, up ${s.process.uptimeS}s\n`)
      }
      return 0
    } finally {
      await client.close()
    }
  }
}

export const keygenPsk: Command = {
  name: 'keygen-psk',
  summary: 'write a new private-network key (swarm.key format, mode 0600) for strata daemon --psk-file; never overwrites',
  usage: 'strata keygen-psk [FILE] [--data-dir D]   (FILE defaults to <data-dir>/swarm.key)',
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, {}, 'any')
    if (positionals.length > 1) throw new UsageError(`expected at most one FILE, got ${positionals.length}`)
    const file = positionals[0] ?? `${dataDirOf(values)}/swarm.key`
    if (positionals[0] === undefined) await mkdir(dataDirOf(values), { recursive: true })
    const { writePsk } = await import('@strata/daemon')
    await writePsk(file)
    ctx.stderr.write(`strata keygen-psk: wrote ${file}; copy it (mode 0600) to every VM of the fleet and start each daemon with --psk-file ${file}\n`)
    ctx.stdout.write(`${file}\n`)
    return 0
  }
}
