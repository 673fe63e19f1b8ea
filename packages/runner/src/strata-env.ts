import { readFile, stat } from 'node:fs/promises'
import { ENV_NAME, MAX_ENV_BYTES, envObject, envProblem } from '@strata/records'
import { StrataEnvError } from './errors.ts'

export { ENV_NAME, MAX_ENV_BYTES, MAX_ENV_STRING, envObject, envProblem, isEnvLine } from '@strata/records'

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** What every step's environment starts with, before the $STRATA_ENV lines below it and its declared env. */
export const BASE_ENV: Readonly<Record<string, string>> = { PATH: DEFAULT_PATH, HOME: '/root' }

/** What one step's $STRATA_ENV file may hold. */
const MAX_ENV_FILE = MAX_ENV_BYTES

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
