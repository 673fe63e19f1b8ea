#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:${GLIBC_TUNABLES} node --max-semi-space-size=4
// The package's entry point: the CLI itself is TypeScript, run directly by Node 24.
// The compile cache keeps the stripped and compiled modules between runs, which
// takes most of the start-up time off every command after the first.
import { fileURLToPath } from 'node:url'

// Run as `node_modules/.bin/strata` with an older node first on PATH (a CI image's
// own), the CLI would fail on its first Node 24 API with a message about that API.
const NODE_MAJOR = 24
if (Number(process.versions.node.split('.')[0]) < NODE_MAJOR) {
  process.stderr.write(`strata: needs Node.js ${NODE_MAJOR}, and ${process.execPath} is ${process.version}; ` +
    'run it as `npx strata` (npm puts the Node that `npm ci` installed first on PATH) or put node_modules/.bin first on PATH\n')
  process.exit(2)
}

// The shebang gives glibc's malloc two arenas and transparent huge pages where the
// kernel gives them on request: most memory is new to a short-lived command, and
// each 4 KiB page of it costs a slow fault on these VMs; with both, a pack takes
// less time and no more memory (doc/DECISIONS.md, "The
// CLI's malloc: two arenas, huge pages"). A GLIBC_TUNABLES of the user's comes
// after them and wins. `npx strata` and node_modules/.bin/strata run the file
// through its shebang; `node packages/cli/bin/strata.js` (the tests) does not.
//
// The shebang's small young generation keeps pack and unpack within their memory
// budget; the daemon, a long-lived process that allocates a buffer per block it
// moves, spends less time on a restore with a larger one. It replaces itself
// (same pid, same stdio) with one, and with glibc's malloc kept to two arenas: its
// threads (main, file writers, libuv, V8) each get an arena by default, memory one
// arena frees is not reused by another, and a restore's peak RSS grew with them.
// And malloc asks for transparent huge pages where the kernel gives them on
// request: a first restore faults in its buffers with far fewer faults that way
// (doc/DECISIONS.md). A
// MALLOC_ARENA_MAX or GLIBC_TUNABLES set by the user is kept. `gc` is exposed so that
// the block exchange can scavenge the buffers it leaves behind while they are young
// (packages/daemon/src/scavenge.ts).
const DAEMON_FLAG = '--max-semi-space-size=16'
if (process.argv[2] === 'daemon' && !process.execArgv.includes(DAEMON_FLAG) && typeof process.execve === 'function') {
  const flags = process.execArgv.filter((f) => !f.startsWith('--max-semi-space-size') && f !== '--expose-gc')
  const env = { MALLOC_ARENA_MAX: '2', GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1', ...process.env }
  process.execve(process.execPath, [process.execPath, ...flags, DAEMON_FLAG, '--expose-gc', fileURLToPath(import.meta.url), ...process.argv.slice(2)], env)
}

const { enableCompileCache } = await import('node:module')
enableCompileCache()
// pack and unpack do their file work on worker threads, and a worker takes long
// to start (a V8 isolate, then its modules). Started now, they start on the
// other core while this thread loads the command and opens the store, instead of
// after (doc/DECISIONS.md, "Pack and unpack start their file workers first"). A pool
// that cannot load is left to the command, which names the reason when it loads.
let pool
if (process.argv[2] === 'pack' || process.argv[2] === 'unpack') {
  try {
    const { FsPool } = await import('@strata/chunker/fs-pool')
    pool = new FsPool()
  } catch {
    pool = undefined
  }
}
const { main } = await import('../src/main.ts')
process.exitCode = await main(process.argv.slice(2), { pool })
