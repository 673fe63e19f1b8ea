import { connectDaemon } from '@strata/daemon/client'
import { parseSize } from '@strata/store'
import type { GcReport } from '@strata/store'
import type { Command, CommandContext } from '../context.ts'
import { count, dataDirOf, formatBytes, parseCommandArgs, UsageError } from '../context.ts'
import type { ArgValues } from '../context.ts'
import { openStoreFor } from '../open.ts'

/** A --max-size style option: undefined when absent, a UsageError naming the flag when not a size. */
export function sizeOption (values: ArgValues, name: string): number | undefined {
  const v = values[name]
  if (typeof v !== 'string') return undefined
  try {
    return parseSize(v)
  } catch (err) {
    throw new UsageError(`--${name}: ${(err as Error).message}`)
  }
}

function render (ctx: CommandContext, r: GcReport): void {
  for (const l of r.removed) ctx.stdout.write(`${r.dryRun ? 'would remove' : 'removed'} ${l.root}  ${formatBytes(l.size).padStart(8)}  last used ${new Date(l.lastUsed).toISOString()}${l.lastCopy ? '  (the last known copy in the fleet)' : ''}\n`)
  for (const k of r.kept) ctx.stdout.write(`kept ${k.root}  ${formatBytes(k.size).padStart(8)}  ${k.reason === 'leased' ? 'in use' : k.reason === 'recent' ? 'used in the last minute' : 'the last known copy in the fleet'}\n`)
  ctx.stderr.write(`strata gc: ${formatBytes(r.before)} -> ${formatBytes(r.after)} of layers (budget ${formatBytes(r.maxSize)}${r.hardLimit !== null ? `, hard limit ${formatBytes(r.hardLimit)}` : ''}), ${count(r.removed.length, 'layer')} ${r.dryRun ? 'would be removed' : 'removed'}\n`)
}

export const gc: Command = {
  name: 'gc',
  summary: 'remove least recently used layers until the store fits a size; never a layer in use, the last fleet copy only over --hard-limit',
  usage: 'strata gc --max-size SIZE [--hard-limit SIZE] [--dry-run] [--data-dir D] [--json]',
  async run (ctx) {
    const { values } = parseCommandArgs(ctx, {
      'max-size': { type: 'string' },
      'hard-limit': { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false }
    }, 0)
    const maxSize = sizeOption(values, 'max-size')
    if (maxSize === undefined) throw new UsageError('--max-size is required (e.g. --max-size 20G)')
    const hardLimit = sizeOption(values, 'hard-limit')
    if (hardLimit !== undefined && hardLimit < maxSize) throw new UsageError('--hard-limit must not be below --max-size')
    const opts = { maxSize, ...(hardLimit !== undefined ? { hardLimit } : {}), dryRun: values['dry-run'] === true, signal: ctx.signal }
    const dataDir = dataDirOf(values)
    // A running daemon holds the store and knows how many copies the fleet has.
    const daemon = await connectDaemon(dataDir, { signal: ctx.signal })
    let report: GcReport
    if (daemon !== undefined) {
      try {
        report = await daemon.gc(opts)
      } finally {
        await daemon.close()
      }
    } else {
      const store = await openStoreFor(ctx, dataDir)
      try {
        report = await store.gc(opts)
      } finally {
        await store.close()
      }
    }
    if (values.json === true) ctx.stdout.write(JSON.stringify(report) + '\n')
    else render(ctx, report)
    return 0
  }
}
