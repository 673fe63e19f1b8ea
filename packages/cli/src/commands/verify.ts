import { CID } from 'multiformats/cid'
import { connectDaemon } from '@strata/daemon/client'
import type { LayerVerification } from '@strata/store'
import type { Command, CommandContext } from '../context.ts'
import { dataDirOf, formatBytes, parseCommandArgs, UsageError } from '../context.ts'
import { openStoreFor } from '../open.ts'

function line (v: LayerVerification): string {
  if (v.status === 'ok') return `${v.root}  ok  (${v.files} files, ${formatBytes(v.bytes)})`
  if (v.status === 'missing') return `${v.root}  missing`
  const what = v.path !== undefined ? `${v.reason ?? 'bad'}: ${v.path}` : v.reason ?? 'marked before'
  return `${v.root}  corrupt: ${what}${v.marked === true ? ' (marked before)' : ''}`
}

export const verify: Command = {
  name: 'verify',
  summary: 're-hash layers (all without a CID) against their manifests and mark the corrupt ones; exit 1 if any is',
  usage: 'strata verify [CID...] [--data-dir D] [--json]',
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, { json: { type: 'boolean', default: false } }, 'any')
    const roots = positionals.map((p) => {
      try {
        return CID.parse(p).toString()
      } catch {
        throw new UsageError(`not a layer CID: ${JSON.stringify(p)}`)
      }
    })
    const dataDir = dataDirOf(values)
    let bad = 0
    const report = (v: LayerVerification): void => {
      if (v.status !== 'ok') bad++
      ctx.stdout.write((values.json === true ? JSON.stringify(v) : line(v)) + '\n')
    }
    // A running daemon holds the store: it verifies, and marks in its own index.
    const daemon = await connectDaemon(dataDir, { signal: ctx.signal })
    if (daemon !== undefined) {
      try {
        for (const v of await daemon.verify(roots, { signal: ctx.signal })) report(v)
      } finally {
        await daemon.close()
      }
    } else {
      const store = await openStoreFor(ctx, dataDir)
      try {
        for (const root of roots.length > 0 ? roots : (await store.layerRoots()).sort()) report(await store.verifyLayer(root, { signal: ctx.signal }))
      } finally {
        await store.close()
      }
    }
    if (values.json !== true) printSummary(ctx, bad)
    return bad > 0 ? 1 : 0
  }
}

function printSummary (ctx: CommandContext, bad: number): void {
  if (bad > 0) ctx.stderr.write(`strata verify: ${bad} layer${bad === 1 ? '' : 's'} corrupt or missing; a corrupt layer is never used again and the next gc removes it\n`)
}
