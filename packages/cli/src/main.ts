import { readFileSync } from 'node:fs'
import type { Logger } from 'pino'
import type { FsPool } from '@strata/chunker/fs-pool'
import type { Command } from './context.ts'
import { UsageError } from './context.ts'
import { commandHelp } from './help.ts'
import { createLogger, oneLine } from './log.ts'

/**
 * Every command, in the order `strata help` lists them, with the module that holds
 * it. A command loads its own module only: `strata pack` does not load the step
 * runner, the YAML parser or the daemon's client (with node:http, which loads the
 * fetch implementation), so a trivial command starts sooner.
 */
const commands: Array<[name: string, load: () => Promise<Command>]> = [
  ['run', async () => (await import('./commands/run.ts')).run],
  ['exec', async () => (await import('./commands/run.ts')).exec],
  ['why', async () => (await import('./commands/run.ts')).why],
  ['daemon', async () => (await import('./commands/daemon.ts')).daemon],
  ['id', async () => (await import('./commands/daemon.ts')).id],
  ['status', async () => (await import('./commands/daemon.ts')).status],
  ['gc', async () => (await import('./commands/gc.ts')).gc],
  ['keygen-psk', async () => (await import('./commands/daemon.ts')).keygenPsk],
  ['keygen-writer', async () => (await import('./commands/writer.ts')).keygenWriter],
  ['pack', async () => (await import('./commands/layer.ts')).pack],
  ['unpack', async () => (await import('./commands/layer.ts')).unpack],
  ['ls', async () => (await import('./commands/layer.ts')).ls],
  ['layers', async () => (await import('./commands/layer.ts')).layers],
  ['verify', async () => (await import('./commands/verify.ts')).verify]
]

/**
 * An error as the one-line reason a command prints: the first line of its message,
 * and its code when it has one. The rest (a stack, a library's advice) goes to the
 * log at debug.
 */
function reason (err: unknown): string {
  const message = oneLine(err instanceof Error ? err.message || err.name : String(err))
  const code = (err as { code?: unknown } | undefined)?.code
  return typeof code === 'string' || typeof code === 'number' ? `${message} (${String(code)})` : message
}

/** The arguments before `--`: what follows belongs to the step's command. */
function ownArgs (argv: string[]): string[] {
  const end = argv.indexOf('--')
  return end < 0 ? argv : argv.slice(0, end)
}

function version (): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

/** An output stream's error: a closed reader is not one; any other is thrown, as it would have been. */
function dropWhenClosed (err: NodeJS.ErrnoException): void {
  if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err
}

/** Writes the help; false when a command's module could not load (it is listed with the reason). */
async function help (out: NodeJS.WritableStream): Promise<boolean> {
  // The whole text in one write, once every module has loaded (main() drops the
  // EPIPE of a reader that stopped early).
  let text = 'strata: layer caching for CI steps, shared peer-to-peer\n\nusage: strata COMMAND [options]   (strata COMMAND --help, strata --version)\n\n'
  let ok = true
  for (const [name, load] of commands) {
    try {
      const c = await load()
      text += `  ${c.usage}\n      ${c.summary}\n`
    } catch (err) {
      ok = false
      text += `  strata ${name}\n      (cannot load the command: ${reason(err)})\n`
    }
  }
  out.write(text)
  return ok
}

/**
 * Runs one command and returns its exit code. SIGINT and SIGTERM abort the
 * command's signal so that it can undo what it was doing before exiting. `pool`:
 * file workers already started, for the command's store; main() ends them.
 */
export async function main (argv: string[], opts: { pool?: FsPool } = {}): Promise<number> {
  try {
    return await run(argv, opts.pool)
  } finally {
    await opts.pool?.close()
  }
}

async function run (argv: string[], pool: FsPool | undefined): Promise<number> {
  // A reader that stops early (`strata ls CID | head -1`, `strata help | true`) closes
  // the pipe: what the command still writes there is dropped and the command runs to
  // its end, so a step's mounts are undone as always, instead of dying of an
  // unhandled EPIPE.
  process.stdout.on('error', dropWhenClosed)
  process.stderr.on('error', dropWhenClosed)
  const [name, ...rest] = argv
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`strata ${version()}\n`)
    return 0
  }
  if (name === 'help' && rest.length > 0) return await helpFor(rest[0]!)
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    const ok = await help(process.stdout)
    return !ok ? 1 : name === undefined ? 2 : 0
  }
  const command = await loadCommand(name)
  if (typeof command === 'number') return command
  const own = ownArgs(rest)
  if (own.includes('--help') || own.includes('-h')) {
    process.stdout.write(commandHelp(command))
    return 0
  }
  let logger: Logger
  try {
    logger = createLogger({ level: process.env.STRATA_LOG_LEVEL, file: process.env.STRATA_LOG_FILE, json: own.includes('--json'), stderr: process.stderr })
  } catch (err) {
    process.stderr.write(`strata ${command.name}: ${reason(err)}\n`)
    return (err as { code?: string }).code === 'ERR_LOG_LEVEL' ? 2 : 1
  }
  const controller = new AbortController()
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(130)
    controller.abort(new Error(`received ${sig}`))
  }
  // An error no caller awaits (a library's background task) ends the command as any
  // other does: one line, the stack in the log at debug, instead of Node's report.
  const onUncaught = (err: unknown): void => {
    logger.debug({ err }, 'uncaught error')
    process.stderr.write(`strata ${command.name}: ${reason(err)}\n`)
    process.exit(1)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('uncaughtException', onUncaught)
  process.on('unhandledRejection', onUncaught)
  try {
    return await command.run({ argv: rest, stdout: process.stdout, stderr: process.stderr, logger, signal: controller.signal, pool })
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`strata ${command.name}: ${oneLine(err.message)}\nusage: ${command.usage}\n(strata ${command.name} --help lists the options)\n`)
      return 2
    }
    logger.debug({ err }, 'command failed')
    process.stderr.write(`strata ${command.name}: ${reason(err)}\n`)
    return controller.signal.aborted ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    process.off('uncaughtException', onUncaught)
    process.off('unhandledRejection', onUncaught)
  }
}

/** The command named `name`, or the exit code when there is none or its module cannot load (said on stderr). */
async function loadCommand (name: string): Promise<Command | number> {
  const load = commands.find(([n]) => n === name)?.[1]
  if (load === undefined) {
    process.stderr.write(`strata: unknown command ${JSON.stringify(name)} (try strata help)\n`)
    return 2
  }
  try {
    return await load()
  } catch (err) {
    // A module that cannot load (a missing native build, a broken install) is named with its reason.
    process.stderr.write(`strata ${name}: cannot load the command: ${reason(err)}\n`)
    return 1
  }
}

/** `strata help COMMAND`: as `strata COMMAND --help`. */
async function helpFor (name: string): Promise<number> {
  const command = await loadCommand(name)
  if (typeof command === 'number') return command
  process.stdout.write(commandHelp(command))
  return 0
}
