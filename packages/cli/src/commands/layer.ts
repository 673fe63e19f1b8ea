import { resolve } from 'node:path'
import { CID } from 'multiformats/cid'
import { LayerNotFoundError } from '@strata/store'
import type { Command, CommandContext } from '../context.ts'
import { count, dataDirOf, formatBytes, parseCommandArgs, UsageError } from '../context.ts'
import { daemonFor, openStoreFor, WAIT_USAGE, waitFlag } from '../open.ts'

const json = { json: { type: 'boolean', default: false }, ...waitFlag } as const

function parseCid (text: string): CID {
  try {
    return CID.parse(text)
  } catch {
    throw new UsageError(`not a layer CID: ${JSON.stringify(text)}`)
  }
}

function print (ctx: CommandContext, line: string): void {
  ctx.stdout.write(line + '\n')
}

export const pack: Command = {
  name: 'pack',
  summary: 'commit a directory (an OverlayFS upper dir) to the store as a layer',
  usage: `strata pack DIR [--data-dir D] [--keep-source] ${WAIT_USAGE} [--json]`,
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, { ...json, 'keep-source': { type: 'boolean', default: false } }, 1)
    // While a daemon holds the store, it commits (the directory is on this machine, it runs as root).
    const store = await daemonFor(ctx, dataDirOf(values)) ?? await openStoreFor(ctx, dataDirOf(values), values)
    try {
      const started = performance.now()
      const info = await store.commit(resolve(positionals[0]!), { keepSource: values['keep-source'] === true, signal: ctx.signal })
      const seconds = (performance.now() - started) / 1000
      if (values.json === true) print(ctx, JSON.stringify({ root: info.root.toString(), path: info.path, entries: info.entries, size: info.size, blocks: info.blocks, seconds }))
      else {
        ctx.stderr.write(`packed ${count(info.entries, 'entry', 'entries')}, ${formatBytes(info.size)} in ${seconds.toFixed(2)}s\n`)
        print(ctx, info.root.toString())
      }
      return 0
    } finally {
      await store.close()
    }
  }
}

export const unpack: Command = {
  name: 'unpack',
  summary: 'write a layer into an empty directory, in upper-dir form',
  usage: `strata unpack CID DEST [--data-dir D] ${WAIT_USAGE} [--json]`,
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, json, 2)
    const root = parseCid(positionals[0]!)
    // While a daemon holds the store, it writes the layer out (it runs on this machine, as root).
    const store = await daemonFor(ctx, dataDirOf(values)) ?? await openStoreFor(ctx, dataDirOf(values), values)
    try {
      const started = performance.now()
      const result = await store.unpack(root, resolve(positionals[1]!), { signal: ctx.signal })
      const seconds = (performance.now() - started) / 1000
      if (values.json === true) print(ctx, JSON.stringify({ root: root.toString(), entries: result.entries, size: result.bytes, seconds }))
      else ctx.stderr.write(`unpacked ${count(result.entries, 'entry', 'entries')}, ${formatBytes(result.bytes)} in ${seconds.toFixed(2)}s\n`)
      return 0
    } finally {
      await store.close()
    }
  }
}

function modeString (type: string, mode: number): string {
  const t = { dir: 'd', symlink: 'l', hardlink: 'h', whiteout: 'w', fifo: 'p', chardev: 'c', blockdev: 'b', file: '-' }[type] ?? '?'
  const rwx = (bits: number, special: boolean, ch: string): string =>
    (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-')
  return t + rwx(mode >> 6, (mode & 0o4000) !== 0, 's') + rwx(mode >> 3, (mode & 0o2000) !== 0, 's') + rwx(mode, (mode & 0o1000) !== 0, 't')
}

/** An entry as `strata ls --json` prints it: xattr names, the number of chunks. */
interface Listed { path: string, type: string, mode: number, uid: number, gid: number, mtime: [number, number], size: number, target?: string, opaque?: true, xattrs?: string[], chunks?: number }

function printEntry (ctx: CommandContext, e: Listed, asJson: boolean): void {
  if (asJson) {
    print(ctx, JSON.stringify(e))
    return
  }
  const suffix = e.type === 'symlink' ? ` -> ${e.target!}` : e.type === 'hardlink' ? ` link to ${e.target!}` : e.type === 'whiteout' ? ' (deleted)' : e.opaque === true ? ' (opaque)' : ''
  print(ctx, `${modeString(e.type, e.mode)} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${String(e.size).padStart(10)} ${e.path}${suffix}`)
}

export const ls: Command = {
  name: 'ls',
  summary: 'list the entries of a layer',
  usage: `strata ls CID [--data-dir D] ${WAIT_USAGE} [--json]`,
  async run (ctx) {
    const { values, positionals } = parseCommandArgs(ctx, json, 1)
    const root = parseCid(positionals[0]!)
    const asJson = values.json === true
    const dataDir = dataDirOf(values)
    // A running daemon holds the store: it lists the layer.
    const daemon = await daemonFor(ctx, dataDir)
    if (daemon !== undefined) {
      try {
        if (!(await daemon.has(root))) throw new UsageError(`no layer ${root.toString()} in the store`)
        for await (const e of daemon.entries(root, { signal: ctx.signal })) printEntry(ctx, e, asJson)
        return 0
      } finally {
        await daemon.close()
      }
    }
    const store = await openStoreFor(ctx, dataDir, values)
    try {
      if (!(await store.has(root))) throw new LayerNotFoundError(root.toString())
      for await (const e of store.entries(root)) {
        printEntry(ctx, {
          path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, size: e.size,
          ...(e.target !== undefined ? { target: e.target } : {}),
          ...(e.opaque === true ? { opaque: true } : {}),
          ...(e.xattrs !== undefined ? { xattrs: e.xattrs.map(([n]) => n) } : {}),
          ...(e.chunks !== undefined ? { chunks: e.chunks.length } : {})
        }, asJson)
      }
      return 0
    } finally {
      await store.close()
    }
  }
}

export const layers: Command = {
  name: 'layers',
  summary: 'list the layers in the store',
  usage: `strata layers [--data-dir D] ${WAIT_USAGE} [--json]`,
  async run (ctx) {
    const { values } = parseCommandArgs(ctx, json, 0)
    // A running daemon holds the store: it answers.
    const store = await daemonFor(ctx, dataDirOf(values)) ?? await openStoreFor(ctx, dataDirOf(values), values)
    try {
      const list = (await store.listLayers()).sort((a, b) => a.created - b.created)
      for (const l of list) {
        if (values.json === true) print(ctx, JSON.stringify({ root: l.root.toString(), entries: l.entries, size: l.size, blocks: l.blocks, created: new Date(l.created).toISOString() }))
        else print(ctx, `${l.root.toString()}  ${String(l.entries).padStart(8)} ${l.entries === 1 ? 'entry  ' : 'entries'}  ${formatBytes(l.size).padStart(8)}  ${new Date(l.created).toISOString()}`)
      }
      return 0
    } finally {
      await store.close()
    }
  }
}
