import type { Command } from './context.ts'

/**
 * What each flag means, by the flag's name; `command flag` where one command
 * means something of its own by it. A command's flags are read from its usage
 * line, so a flag is listed even before it is described here.
 */
const FLAGS: Record<string, string> = {
  '--data-dir': 'the store, the node identity and the daemon socket (default $STRATA_DATA_DIR, else /var/lib/strata)',
  '--json': 'print JSON, one object per line, on stdout instead of text',
  'run --json': 'print the runner events and the result as JSON lines on stdout; the step output goes to stderr',
  'exec --json': 'print the runner events and the result as JSON lines on stdout; the step output goes to stderr',
  '-f': 'the pipeline file (also --file; default strata.yml)',
  '--no-cache': 'run every step instead of restoring it (results are still captured)',
  'exec --no-cache': 'an uncached step: run the command every time, store no layer',
  '--graph': 'print the steps as a graph, each with the steps it uses and whether it would hit or run now, and run nothing; --graph=dot: the same as Graphviz dot',
  '--export': 'after the last step, write what the steps changed (their layers merged, deletions applied) into DIR, absent or empty',
  '--scope': 'the scope records are written in (default $STRATA_SCOPE, else default)',
  '--read-scope': 'a scope records are read from, most preferred first (default $STRATA_READ_SCOPES, else the own scope)',
  'daemon --read-scope': 'a scope a lookup reads when the client names none, most preferred first (default: default)',
  '--epoch': 'the trust epoch (default $STRATA_EPOCH, else the daemon\'s, else 0)',
  'daemon --epoch': 'the trust epoch: records of another epoch are refused (default 0)',
  '--max-input-files': 'the most files the inputs of one step may name (default 100000)',
  '--max-input-bytes': 'the most bytes the inputs of one step may hold (default 8G)',
  '--name': 'the step name, part of its cache key',
  '--input': 'a file, directory or glob the command reads, hashed into the key; repeat for several',
  '--env': 'an environment variable of the step, its value hashed into the key; NAME alone takes it from here',
  '--parent': 'the key printed by the step this one runs on (its layers are mounted below)',
  '--cwd': 'the directory the command runs in (default the current one)',
  '--timeout': 'kill the command after this long (e.g. 90s, 10m)',
  '--claim-wait': 'how long a step that misses waits while another process or peer builds the same key, then runs it too (default 30m, never past the step\'s timeout)',
  '--listen': 'a libp2p address to listen on; repeat for several (default /ip4/0.0.0.0/tcp/7401)',
  '--bootstrap': 'a peer address to connect to at start; repeat for several (also $STRATA_BOOTSTRAP)',
  '--replicas': 'how many peers copy a newly announced layer (default 2)',
  '--metrics-listen': 'serve Prometheus metrics at http://HOST:PORT/metrics',
  '--mdns': 'find peers on the local network by mDNS',
  '--psk-file': 'the private-network key (strata keygen-psk): only peers with it connect (also $STRATA_PSK_FILE)',
  '--require-psk': 'refuse to start without --psk-file',
  '--allow-peer': 'a peer id allowed to connect; repeat for several (default: any)',
  '--allow-peers-file': 'a file of allowed peer ids, one a line',
  '--trusted-writer': 'a peer whose records are trusted, optionally for some scopes only; repeat for several',
  '--trusted-writers-file': 'a file of trusted writers, one a line',
  '--max-size': 'the size the store is kept to by removing least recently used layers (e.g. 20G)',
  '--hard-limit': 'over this size, the last copy in the fleet of a layer may go too',
  '--dry-run': 'say what would be removed, remove nothing',
  '--keep-source': 'copy the directory into the store instead of moving it',
  '--help': 'print this help'
}

/** The flags of a usage line, in order, each with the value it takes as the line names it. */
export function flagsOf (usage: string): Array<{ flag: string, value: string }> {
  const seen = new Set<string>()
  const out: Array<{ flag: string, value: string }> = []
  for (const m of usage.matchAll(/(?<=^|[\s[])(--?[a-z][a-z-]*)(?: ([^\s[\]-][^\s[\]]*(?:\[[^\]\s]*\])?))?/g)) {
    const flag = m[1]!
    if (seen.has(flag)) continue
    seen.add(flag)
    out.push({ flag, value: m[2] ?? '' })
  }
  return out
}

/** A command's help: its usage, what it does, and each flag with what it means. */
export function commandHelp (c: Command): string {
  const flags = [...flagsOf(c.usage), { flag: '-h, --help', value: '' }]
  const left = flags.map((f) => (f.value !== '' ? `${f.flag} ${f.value}` : f.flag))
  const width = Math.min(Math.max(...left.map((l) => l.length)), 28)
  let text = `usage: ${c.usage}\n\n${c.summary}\n\noptions:\n`
  flags.forEach((f, i) => {
    const key = f.flag === '-h, --help' ? '--help' : f.flag
    const meaning = FLAGS[`${c.name} ${key}`] ?? FLAGS[key] ?? ''
    const l = left[i]!
    text += meaning === '' ? `  ${l}\n` : l.length > width ? `  ${l}\n  ${' '.repeat(width)}  ${meaning}\n` : `  ${l.padEnd(width)}  ${meaning}\n`
  })
  return text
}
