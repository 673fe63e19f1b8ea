#!/usr/bin/env -S node --max-semi-space-size=4
// The package's entry point: the CLI itself is TypeScript, run directly by Node 24.
// The compile cache keeps the stripped and compiled modules between runs, which
// takes most of the start-up time off every command after the first.
import { enableCompileCache } from 'node:module'

enableCompileCache()
const { main } = await import('../src/main.ts')
process.exitCode = await main(process.argv.slice(2))
