import { readFile, stat } from 'node:fs/promises'
import { StrataEnvError } from './errors.ts'

/** The kernel's bound on one NAME=value string of a new program's environment (MAX_ARG_STRLEN), its NUL included. */
export const MAX_ENV_STRING = 128 * 1024
/**
 * What the environment a step starts with (PATH, HOME and the $STRATA_ENV lines of
 * the steps below) may take, each string with its NUL: exec has room for about a
 * quarter of the stack limit (2 MiB by default) for arguments and environment
 * together, and the step's own command and declared env need some of it.
 */
export const MAX_ENV_BYTES = 1024 * 1024
/** What one step's $STRATA_ENV file may hold. */
const MAX_ENV_FILE = MAX_ENV_BYTES
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/

/** The environment NAME=value `lines` make on top of `base`, a later line for a name winning. */
export function envObject (lines: readonly string[], base: Readonly<Record<string, string>> = {}): Record<string, string> {
  const out: Record<string, string> = { ...base }
  for (const l of lines) {
    const i = l.indexOf('=')
    out[l.slice(0, i)] = l.slice(i + 1)
  }
  return out
}

/** Why `env` could not be handed to exec, naming the variable at fault; undefined when it can. */
export function envProblem (env: Readonly<Record<string, string>>): { variable: string, reason: string } | undefined {
  let total = 0
  let largest = { name: '', bytes: 0 }
  for (const [name, value] of Object.entries(env)) {
    const bytes = Buffer.byteLength(name) + 1 + Buffer.byteLength(value) + 1
    if (bytes > MAX_ENV_STRING) {
      return { variable: name, reason: `${name} is ${bytes - 1} bytes as NAME=value; exec takes at most ${MAX_ENV_STRING - 1} per variable` }
    }
    total += bytes
    if (bytes > largest.bytes) largest = { name, bytes }
  }
  if (total > MAX_ENV_BYTES) {
    return { variable: largest.name, reason: `the environment would be ${total} bytes, over the ${MAX_ENV_BYTES} strata gives exec (the largest variable: ${largest.name}, ${largest.bytes - 1} bytes)` }
  }
  return undefined
}

/** Whether `line` is NAME=value with no NUL byte. */
export function isEnvLine (line: string): boolean {
  const eq = line.indexOf('=')
  return eq > 0 && ENV_NAME.test(line.slice(0, eq)) && !line.includes('\0')
}

/** The step's own $STRATA_ENV lines: NAME=value each, blank lines skipped; anything else fails the step. */
export async function readStrataEnv (step: string, path: string): Promise<string[]> {
  const st = await stat(path)
  if (!st.isFile()) throw new StrataEnvError(step, 'is not a regular file')
  if (st.size > MAX_ENV_FILE) throw new StrataEnvError(step, `is larger than ${MAX_ENV_FILE} bytes`)
  const text = await readFile(path, 'utf8')
  const out: string[] = []
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue
    const eq = line.indexOf('=')
    const name = eq === -1 ? line : line.slice(0, eq)
    if (eq === -1 || !ENV_NAME.test(name)) throw new StrataEnvError(step, `line ${i + 1} is not NAME=value: ${JSON.stringify(line.slice(0, 80))}`)
    if (name === 'STRATA_ENV' || name.startsWith('STRATA_SB_')) throw new StrataEnvError(step, `line ${i + 1} sets ${name}, which is reserved`, name)
    if (line.includes('\0')) throw new StrataEnvError(step, `line ${i + 1} contains a NUL byte`, name)
    out.push(line)
  }
  return out
}

/** Throws StrataEnvError, naming the variable, when the environment `lines` make on top of `base` could not be exec'd. */
export function checkStrataEnv (step: string, lines: readonly string[], base: Readonly<Record<string, string>>): void {
  const problem = envProblem(envObject(lines, base))
  if (problem !== undefined) throw new StrataEnvError(step, problem.reason, problem.variable)
}
