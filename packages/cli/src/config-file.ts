// A command's flags from a YAML file: `key: value` with the flags' own names.
import { open } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import type { ParseArgsOptionsConfig } from 'node:util'
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml'
import type { Node } from 'yaml'
import type { ArgValues } from './context.ts'

/** Config files larger than this are refused unread. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024

/** The config file is unreadable, not YAML, or has a key or value the command does not take. */
export class ConfigFileError extends Error {
  override name = 'ConfigFileError'
  readonly code = 'ERR_CONFIG_FILE'
  readonly file: string
  readonly line: number
  readonly col: number
  constructor (file: string, line: number, col: number, message: string, opts?: { cause?: unknown }) {
    super(`${file}${line > 0 ? `:${line}:${col}` : ''}: ${message}`, opts)
    this.file = file
    this.line = line
    this.col = col
  }
}

/**
 * Reads `file` as flags for a command whose options are `options`: a mapping whose
 * keys are the flags' names. A boolean flag takes true or false; a flag that repeats
 * takes a list (or one value); others take a string or a number. Keys in `paths`
 * name files: relative ones are taken from the file's directory.
 */
export async function readConfigFile (file: string, options: ParseArgsOptionsConfig, paths: readonly string[] = []): Promise<ArgValues> {
  let text: string
  try {
    // At most the limit and one byte: a device that never ends is refused too.
    const fh = await open(file)
    try {
      const buf = Buffer.alloc(MAX_CONFIG_FILE_BYTES + 1)
      let n = 0
      for (let r = 1; r > 0 && n < buf.length; n += r) r = (await fh.read(buf, n, buf.length - n, null)).bytesRead
      if (n > MAX_CONFIG_FILE_BYTES) throw new Error(`larger than ${MAX_CONFIG_FILE_BYTES} bytes`)
      text = buf.subarray(0, n).toString('utf8')
    } finally {
      await fh.close()
    }
  } catch (err) {
    throw new ConfigFileError(file, 0, 0, `cannot read: ${(err as Error).message}`, { cause: err })
  }
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, strict: true, uniqueKeys: true })
  const fail = (offset: number, message: string, cause?: unknown): never => {
    const p = lines.linePos(offset)
    throw new ConfigFileError(file, p.line, p.col, message, { cause })
  }
  const syntax = doc.errors[0]
  if (syntax !== undefined) fail(syntax.pos[0], syntax.message.split('\n')[0] ?? 'not YAML', syntax)
  const root = doc.contents
  const out: ArgValues = {}
  if (root === null || (isScalar(root) && root.value === null)) return out
  if (!isMap(root)) return fail(root.range?.[0] ?? 0, 'must be a mapping of flag names to values')
  const known = Object.keys(options).sort()
  for (const pair of root.items) {
    const keyNode = pair.key as Node | null
    const at = keyNode?.range?.[0] ?? 0
    const name = isScalar(keyNode) ? keyNode.value : undefined
    if (typeof name !== 'string') return fail(at, 'keys must be flag names')
    const spec = options[name]
    if (spec === undefined) return fail(at, `unknown key ${JSON.stringify(name)} (keys are the flags: ${known.join(', ')})`)
    const node = pair.value as Node | null
    const vat = node?.range?.[0] ?? at
    const scalar = (n: Node | null): string | boolean => {
      const v = isScalar(n) ? n.value : undefined
      if (spec.type === 'boolean') {
        if (typeof v !== 'boolean') return fail(n?.range?.[0] ?? vat, `${name} must be true or false`)
        return v
      }
      if (typeof v === 'string' && v !== '') return paths.includes(name) ? resolve(dirname(file), v) : v
      if (typeof v === 'number' && Number.isFinite(v)) return String(v)
      return fail(n?.range?.[0] ?? vat, `${name} must be a string${spec.multiple === true ? ' or a list of strings' : ''}`)
    }
    if (spec.multiple === true) out[name] = isSeq(node) ? node.items.map((n) => scalar(n as Node | null)) : [scalar(node)]
    else out[name] = scalar(node)
  }
  return out
}
