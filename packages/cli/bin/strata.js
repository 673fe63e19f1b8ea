#!/usr/bin/env -S node --max-semi-space-size=4
// The package's entry point: the CLI itself is TypeScript, run directly by Node 24.
import { main } from '../src/main.ts'

process.exitCode = await main(process.argv.slice(2))
