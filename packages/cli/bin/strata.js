#!/usr/bin/env -S node --max-semi-space-size=4
// The package's entry point: the CLI itself is TypeScript, run directly by Node 24.
// The compile cache keeps the stripped and compiled modules between runs, which
// takes most of the start-up time off every command after the first.
import { enableCompileCache } from 'node:module'
import { fileURLToPath } from 'node:url'

// The shebang's small young generation keeps pack and unpack within their memory
// budget; the daemon, a long-lived process that allocates a buffer per block it
// moves, spends ~10 % less time on a restore with a larger one. It replaces itself
// (same pid, same stdio) with one, and with glibc's malloc kept to two arenas: its
// threads (main, file writers, libuv, V8) each get an arena by default, memory one
// arena frees is not reused by another, and a restore's peak RSS was ~90 MB higher
// for the same time (doc/DECISIONS.md). A MALLOC_ARENA_MAX set by the user is kept.
const DAEMON_FLAG = '--max-semi-space-size=16'
if (process.argv[2] === 'daemon' && !process.execArgv.includes(DAEMON_FLAG) && typeof process.execve === 'function') {
  const flags = process.execArgv.filter((f) => !f.startsWith('--max-semi-space-size'))
  const env = { MALLOC_ARENA_MAX: '2', ...process.env }
  process.execve(process.execPath, [process.execPath, ...flags, DAEMON_FLAG, fileURLToPath(import.meta.url), ...process.argv.slice(2)], env)
}

enableCompileCache()
const { main } = await import('../src/main.ts')
process.exitCode = await main(process.argv.slice(2))
