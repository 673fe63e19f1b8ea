import type { FsPool } from '@strata/chunker/fs-pool'
import type { Command } from './context.ts'
import { createLogger, UsageError } from './context.ts'

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
  ['layers', async () => (await import('./commands/layer.ts')).layers]
]

/** An error as the one-line reason a command prints: its message, and its code when it has one. */
function reason (err: unknown): string {
  const message = err instanceof Error ? err.message : String(err)
  const code = (err as { code?: unknown } | undefined)?.code
  return code !== undefined ? `${message} (${String(code)})` : message
}

/** An output stream's error: a closed reader is not one; any other is thrown, as it would have been. */
function dropWhenClosed (err: NodeJS.ErrnoException): void {
  if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err
}

/** Writes the help; false when a command's module could not load (it is listed with the reason). */
async function help (out: NodeJS.WritableStream): Promise<boolean> {
  // The whole text in one write, once every module has loaded (main() drops the
  // EPIPE of a reader that stopped early).
  let text = 'strata: layer caching for CI steps, shared peer-to-peer\n\nusage: strata COMMAND [options]\n\n'
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
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    const ok = await help(process.stdout)
    return !ok ? 1 : name === undefined ? 2 : 0
  }
  const load = commands.find(([n]) => n === name)?.[1]
  if (load === undefined) {
    process.stderr.write(`strata: unknown command ${JSON.stringify(name)} (try strata help)\n`)
    return 2
  }
  let command: Command
  try {
    command = await load()
  } catch (err) {
    // A module that cannot load (a missing native build, a broken install) is named with its reason.
    process.stderr.write(`strata ${name}: cannot load the command: ${reason(err)}\n`)
    return 1
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
    return await command.run({ argv: rest, stdout: process.stdout, stderr: process.stderr, logger, signal: controller.signal, pool })
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`strata ${command.name}: ${err.message}\nusage: ${command.usage}\n`)
      return 2
    }
    logger.debug({ err }, 'command failed')
    process.stderr.write(`strata ${command.name}: ${reason(err)}\n`)
    return controller.signal.aborted ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
