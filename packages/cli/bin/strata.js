#!/usr/bin/env node
// The package's entry point: the CLI itself is TypeScript, run directly by Node 24.
import { main } from '../src/main.ts'

process.exitCode = await main(process.argv.slice(2))
