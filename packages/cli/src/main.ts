import type { Command } from './context.ts'
import { createLogger, UsageError } from './context.ts'
import { layers, ls, pack, unpack } from './commands/layer.ts'
import { exec, run, why } from './commands/run.ts'
import { daemon, id, keygenPsk, status } from './commands/daemon.ts'
import { gc } from './commands/gc.ts'

/** Every command, in the order `strata help` lists them. */
export const commands: Command[] = [run, exec, why, daemon, id, status, gc, keygenPsk, pack, unpack, ls, layers]

function help (out: NodeJS.WritableStream): void {
  out.write('strata: layer caching for CI steps, shared peer-to-peer\n\nusage: strata COMMAND [options]\n\n')
  for (const c of commands) out.write(`  ${c.usage}\n      ${c.summary}\n`)
}

/**
 * Runs one command and returns its exit code. SIGINT and SIGTERM abort the
 * command's signal so that it can undo what it was doing before exiting.
 */
export async function main (argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    help(process.stdout)
    return name === undefined ? 2 : 0
  }
  const command = commands.find((c) => c.name === name)
  if (command === undefined) {
    process.stderr.write(`strata: unknown command ${JSON.stringify(name)} (try strata help)\n`)
    return 2
  }
  const controller = new AbortController()
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(130)
    controller.abort(new Error(`received ${sig}`))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const logger = createLogger()
  try {
    return await command.run({ argv: rest, stdout: process.stdout, stderr: process.stderr, logger, signal: controller.signal })
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`strata ${command.name}: ${err.message}\nusage: ${command.usage}\n`)
      return 2
    }
    const e = err as Error & { code?: string }
    logger.debug({ err }, 'command failed')
    process.stderr.write(`strata ${command.name}: ${e.message}${e.code !== undefined ? ` (${e.code})` : ''}\n`)
    return controller.signal.aborted ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
