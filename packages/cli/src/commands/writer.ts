import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { generateWriterKey, isWriterBaseName, isWriterKeyName, splitWriterKeyName } from '@strata/records'
import type { Command } from '../context.ts'
import { dataDirOf, parseCommandArgs, UsageError } from '../context.ts'

/** The highest generation of `base` among the `BASE-N.key` files in `dir` (0 for none). */
async function lastGeneration (dir: string, base: string): Promise<number> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
    throw err
  }
  let last = 0
  for (const n of names) {
    if (!n.endsWith('.key') || !isWriterKeyName(n.slice(0, -4))) continue
    const k = splitWriterKeyName(n.slice(0, -4))
    if (k.base === base) last = Math.max(last, k.generation)
  }
  return last
}

export const keygenWriter: Command = {
  name: 'keygen-writer',
  summary: 'write a new named writer key (NAME-1, or the next NAME-N with --rotate) for strata run --writer-key; prints its public part NAME-N:KEY for --trusted-writer',
  usage: 'strata keygen-writer NAME [--rotate] [--dir DIR] [--data-dir D]   (DIR defaults to <data-dir>/writer-keys; NAME may be an explicit NAME-N)',
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, { rotate: { type: 'boolean', default: false }, dir: { type: 'string' } }, 1)
    const given = positionals[0]!
    const dir = typeof values.dir === 'string' ? values.dir : `${dataDirOf(values)}/writer-keys`
    let name: string
    if (isWriterKeyName(given)) {
      if (values.rotate === true) throw new UsageError(`${given} already names a generation: give the base name with --rotate, or the next NAME-N without it`)
      name = given
    } else if (isWriterBaseName(given)) {
      name = `${given}-${values.rotate === true ? await lastGeneration(dir, given) + 1 : 1}`
    } else {
      throw new UsageError(`${JSON.stringify(given)} is not a writer key name: letters, digits and "._+-", e.g. ci-main (or ci-main-2)`)
    }
    const file = `${dir}/${name}.key`
    const { key, secret } = generateWriterKey(name)
    await mkdir(dir, { recursive: true, mode: 0o700 })
    try {
      await writeFile(file, secret, { mode: 0o600, flag: 'wx' })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      ctx.stderr.write(`strata keygen-writer: ${file} exists: not overwriting a key (use --rotate for the next generation)\n`)
      return 1
    }
    ctx.stderr.write(`strata keygen-writer: wrote ${file} (keep it in the CI's secret store; a job that may write uses it with --writer-key FILE or STRATA_WRITER_KEY_FILE)\n` +
      `  trust it on every daemon: --trusted-writer ${key.id}@SCOPES\n`)
    ctx.stdout.write(`${key.id}\n`)
    return 0
  }
}
