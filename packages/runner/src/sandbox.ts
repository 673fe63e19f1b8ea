import { spawn } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readFile, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import { SANDBOX_HELPER } from '@strata/sys'
import type { Writable } from 'node:stream'
import type { Logger } from 'pino'
import { ChainTooLongError, SandboxError } from './errors.ts'

/** OverlayFS stacks at most 500 lower dirs; the host base takes one more (the nested base overlay). */
export const MAX_LOWER_LAYERS = 499

/** Where the step's output goes. */
export interface OutputOptions {
  stdout: Writable
  stderr: Writable
  /** Prefix each line with the step name. Without it, process.stdout/stderr are handed to the step as they are (a TTY stays a TTY). */
  prefix: boolean
}

export interface SandboxSpec {
  name: string
  /** Private working dir on the data dir's filesystem; its `u` subdir becomes the upper dir. */
  runDir: string
  /** Layer dirs below the step, newest first. */
  lowers: readonly string[]
  /** `/` for the host base (mounted through a nested read-only overlay) or a rootfs directory. */
  base: string
  /** A host path (real, absolute) that must not exist in the view: the data dir, on the host base. */
  mask?: string
  /** More host paths (real, absolute) absent from the view on the host base: a writer key file. */
  hide?: readonly string[]
  run: string
  /** Bytes the step's /tmp and /dev/shm may each hold. Default DEFAULT_TMP_SIZE. */
  tmpSize?: number
  /** Host dirs bind-mounted read-write at the same path in the view (not captured, not in the key). */
  shared?: readonly string[]
  cwd: string
  /** The step's whole environment (PATH, HOME, inherited $STRATA_ENV lines, declared env); STRATA_ENV is added. */
  env: Record<string, string>
  output: OutputOptions
  timeoutMs?: number
  killGraceMs: number
  signal?: AbortSignal
  log: Logger
}

export interface SandboxResult {
  exitCode: number | null
  signal: string | null
  /** Why strata killed it, if it did. */
  killed?: 'timeout' | 'cancel'
  durationMs: number
}

/** Path of the $STRATA_ENV file inside the step (on its private /tmp). */
export const STRATA_ENV_PATH = '/tmp/.strata-env'
/** Path of the step's `run:` script inside the step (mode 0444, on its private /tmp). */
export const STRATA_SCRIPT_PATH = '/tmp/.strata-script'
/** What a step's /tmp (and /dev/shm) may hold unless the pipeline or the runner says otherwise. */
export const DEFAULT_TMP_SIZE = 4 * 1024 ** 3
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

let helperFound: true | undefined

/** The runner's sandbox options: throws TypeError for a tmpSize below 4 KiB or a shared dir checkShared refuses. */
export function checkSandboxOptions (opts: { tmpSize?: number | undefined, shared?: readonly string[] | undefined }, hidden: string | undefined): void {
  if (opts.tmpSize !== undefined && (!Number.isSafeInteger(opts.tmpSize) || opts.tmpSize < 4096)) {
    throw new TypeError(`tmpSize must be a whole number of bytes >= 4096, got ${opts.tmpSize}`)
  }
  for (const dir of opts.shared ?? []) checkShared(dir, hidden)
}

/** A shared dir is an absolute path other than `/` that neither holds nor lies inside `hidden` (the data dir). */
export function checkShared (dir: string, hidden: string | undefined): void {
  if (!dir.startsWith('/') || dir.includes('\0') || dir.split('/').includes('..')) throw new TypeError(`a shared dir must be an absolute path, got ${JSON.stringify(dir)}`)
  const d = dir.replace(/\/+$/, '')
  if (d === '') throw new TypeError('/ cannot be a shared dir: it would give steps the whole host')
  if (hidden !== undefined && (d === hidden || hidden.startsWith(`${d}/`) || d.startsWith(`${hidden}/`))) {
    throw new TypeError(`shared dir ${dir} would show ${hidden} to steps`)
  }
}

function findHelper (step: string): true {
  try {
    accessSync(SANDBOX_HELPER, constants.X_OK)
    return true
  } catch (err) {
    throw new SandboxError(step, `${SANDBOX_HELPER} is missing: build it with \`npm rebuild @strata/sys\``, { cause: err })
  }
}

/**
 * The stack without repeats, keeping each layer's top-most place. Two steps can
 * produce the same layer (both empty, say) and OverlayFS refuses a dir listed twice;
 * the lower copy adds nothing, since every entry of it is already present above.
 */
export function uniqueLayers (lowers: readonly string[]): string[] {
  return [...new Set(lowers)]
}

/** Prepares `runDir` (l/ u/ w/ m/ b/ h/ env) for a step over `lowers`. */
export async function prepareRunDir (runDir: string, allLowers: readonly string[], base: string): Promise<string> {
  const lowers = uniqueLayers(allLowers)
  if (lowers.length > MAX_LOWER_LAYERS) throw new ChainTooLongError(lowers.length, MAX_LOWER_LAYERS)
  for (const d of ['l', 'u', 'w', 'm', 'b', 'h']) await mkdir(`${runDir}/${d}`, { recursive: true, mode: 0o755 })
  await writeFile(`${runDir}/env`, '', { mode: 0o600 })
  // The top layer's root dir gives the merged root its owner and mode: keep the base's.
  const root = await stat(base)
  await chmod(`${runDir}/u`, root.mode & 0o7777)
  await chown(`${runDir}/u`, root.uid, root.gid)
  const names: string[] = []
  for (let i = 0; i < lowers.length; i++) {
    const n = i.toString(36)
    await symlink(lowers[i]!, `${runDir}/l/${n}`)
    names.push(n)
  }
  if (base === '/') names.push('../b')
  else {
    await symlink(base, `${runDir}/l/base`)
    names.push('base')
  }
  return names.join(':')
}

/**
 * Gives the upper dir's root a fixed time before capture: it changes whenever the
 * step touches a top-level entry and would make identical changes different layers.
 */
export async function normalizeUpperRoot (runDir: string): Promise<void> {
  await utimes(`${runDir}/u`, 0, 0)
}

/**
 * Runs the step's command in a private mount, pid and IPC namespace, pivoted into
 * the overlay of `lowers` over the base, as root with Docker's default capabilities
 * less MKNOD and NET_RAW (native/sandbox.c in @strata/sys does the setup).
 * Cancellation and timeout send SIGTERM to the step's process group, then after
 * `killGraceMs` SIGKILL to the namespace's pid 1, which makes the kernel kill every
 * process left in the namespace (including ones that left the process group) and
 * drops every mount with the namespace.
 */
export async function runSandbox (spec: SandboxSpec, lowerOption: string): Promise<SandboxResult> {
  spec.signal?.throwIfAborted()
  helperFound ??= findHelper(spec.name)
  const tmpSize = spec.tmpSize ?? DEFAULT_TMP_SIZE
  const shared = spec.shared ?? []
  checkSandboxOptions({ tmpSize, shared }, spec.mask)
  const env: Record<string, string> = { ...spec.env, STRATA_ENV: STRATA_ENV_PATH }
  env.PATH ??= HOST_PATH
  const hidden = [spec.mask ?? '', ...(spec.hide ?? [])].filter((p) => p !== '')
  for (const p of hidden) if (!p.startsWith('/') || p.includes('\n')) throw new TypeError(`cannot hide ${JSON.stringify(p)} from a step: not an absolute path on one line`)
  const args = [spec.runDir, lowerOption, spec.base === '/' ? '1' : '0', hidden.join('\n'), spec.cwd, spec.name, String(tmpSize), ...shared]
  const out = spec.output
  const passThrough = !out.prefix && out.stdout === process.stdout && out.stderr === process.stderr
  const started = performance.now()
  // The helper dies with this process (pdeathsig) and takes the namespace's pid 1 with it: no orphan step.
  const child = spawn(SANDBOX_HELPER, args, {
    env,
    cwd: spec.runDir,
    detached: true, // its own process group: the target of SIGTERM
    // fd 3 carries the script: argv and the environment cap one string at 128 KiB, and the data dir's disk may be full.
    stdio: ['ignore', passThrough ? 'inherit' : 'pipe', passThrough ? 'inherit' : 'pipe', 'pipe']
  })
  const script = child.stdio[3] as Writable
  script.on('error', () => {}) // the helper stopped before reading it: its setup.log says why
  script.end(spec.run)
  if (!passThrough) {
    pump(child.stdout!, out.stdout, out.prefix ? `${spec.name} | ` : '')
    pump(child.stderr!, out.stderr, out.prefix ? `${spec.name} | ` : '')
  }

  let killed: 'timeout' | 'cancel' | undefined
  let grace: NodeJS.Timeout | undefined
  const terminate = (why: 'timeout' | 'cancel'): void => {
    if (killed !== undefined || child.pid === undefined) return
    killed = why
    spec.log.info({ step: spec.name, why }, 'stopping the step')
    signalGroup(child.pid, 'SIGTERM')
    grace = setTimeout(() => {
      const init = nsInitPid(child.pid!)
      spec.log.warn({ step: spec.name, init }, 'step still running after the grace period: SIGKILL')
      if (init !== undefined) {
        try {
          process.kill(init, 'SIGKILL')
          return
        } catch {
          // gone in between
        }
      }
      signalGroup(child.pid!, 'SIGKILL')
    }, spec.killGraceMs)
  }
  const onAbort = (): void => terminate('cancel')
  spec.signal?.addEventListener('abort', onAbort, { once: true })
  const timer = spec.timeoutMs !== undefined ? setTimeout(() => terminate('timeout'), spec.timeoutMs) : undefined

  try {
    const { code, signal } = await new Promise<{ code: number | null, signal: string | null }>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (code, signal) => resolve({ code, signal }))
    })
    const durationMs = performance.now() - started
    const result: SandboxResult = { exitCode: code, signal, durationMs }
    if (killed !== undefined) {
      result.killed = killed
      return result
    }
    if (!await exists(`${spec.runDir}/ready`)) {
      const detail = (await readFile(`${spec.runDir}/setup.log`, 'utf8').catch(() => '')).trim()
      throw new SandboxError(spec.name, detail !== '' ? detail : `setup exited with ${code ?? signal}`)
    }
    return result
  } catch (err) {
    if (err instanceof SandboxError) throw err
    throw new SandboxError(spec.name, (err as Error).message, { cause: err })
  } finally {
    spec.signal?.removeEventListener('abort', onAbort)
    clearTimeout(timer)
    clearTimeout(grace)
  }
}

function signalGroup (pgid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pgid, sig)
  } catch {
    // the group is gone
  }
}

/** Host pid of the helper's forked child: pid 1 of the step's pid namespace. */
function nsInitPid (helperPid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${helperPid}/task/${helperPid}/children`, 'utf8').trim().split(/\s+/)[0]
    return first !== undefined && first !== '' ? Number(first) : undefined
  } catch {
    return undefined
  }
}

async function exists (p: string): Promise<boolean> {
  try {
    await readFile(p)
    return true
  } catch {
    return false
  }
}

/** Copies `from` to `to`, prefixing each line, with backpressure; does not end `to`. */
function pump (from: NodeJS.ReadableStream, to: Writable, prefix: string): void {
  let partial = ''
  from.setEncoding('utf8')
  const write = (text: string): void => {
    if (!to.write(text)) {
      from.pause()
      to.once('drain', () => from.resume())
    }
  }
  from.on('data', (chunk: string) => {
    if (prefix === '') {
      write(chunk)
      return
    }
    const text = partial + chunk
    const lines = text.split('\n')
    partial = lines.pop()!
    // A line with no newline in sight is flushed at 64 KiB rather than held without bound.
    if (partial.length > 65536) {
      lines.push(partial)
      partial = ''
    }
    if (lines.length > 0) write(lines.map((l) => `${prefix}${l}\n`).join(''))
  })
  from.on('end', () => {
    if (partial !== '') to.write(`${prefix}${partial}\n`)
    partial = ''
  })
}
