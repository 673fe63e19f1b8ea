// The bounds a record's env lines must keep: they become the environment exec gives the steps above.

/** The kernel's bound on one NAME=value string of a new program's environment (MAX_ARG_STRLEN), its NUL included. */
export const MAX_ENV_STRING = 128 * 1024
/**
 * What the environment a step starts with (PATH, HOME and the $STRATA_ENV lines of
 * the steps below) may take, each string with its NUL: exec has room for about a
 * quarter of the stack limit (2 MiB by default) for arguments and environment
 * together, and the step's own command and declared env need some of it.
 */
export const MAX_ENV_BYTES = 1024 * 1024
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
