import { spawn } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readFile, stat, symlink, utimes, writeFile } from 'node:fs/promises'
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
  /** A host path to hide under an empty read-only tmpfs inside the view (the data dir, on the host base). */
  mask?: string
  run: string
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
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

// Runs as pid 1 of a fresh pid namespace, in a private mount namespace: every mount
// below dies with it. Lower dirs are short symlinks in $R/l (named 0, 1, ...) so the
// mount options stay far below the one-page limit whatever the chain length.
// The base overlay for the host exists because OverlayFS refuses a lower dir inside
// another lower dir, and every layer dir is inside `/`.
const SETUP = String.raw`set -eu
R=$STRATA_SB_RUN
M=$R/m
exec 9>&2 2>"$R/setup.log"
cd "$R/l"
if [ -n "$STRATA_SB_HOSTBASE" ]; then
  mount -t tmpfs -o ro,size=4k,mode=0755 strata-empty ../e
  mount -t overlay strata-base -o ro,lowerdir=/:../e ../b
fi
mount -t overlay strata -o "lowerdir=$STRATA_SB_LOWER,upperdir=../u,workdir=../w,redirect_dir=off,metacopy=off,index=off,xino=off,uuid=null" ../m
for d in proc sys dev tmp; do [ -d "$M/$d" ] || mkdir -p "$M/$d"; done
mount -t proc -o nosuid,nodev,noexec proc "$M/proc"
mount --bind -o ro /sys "$M/sys"
mount --bind /dev "$M/dev"
if [ -d /dev/pts ] && [ -d "$M/dev/pts" ]; then mount --bind /dev/pts "$M/dev/pts"; fi
if [ -d "$M/dev/shm" ]; then mount -t tmpfs -o nosuid,nodev,mode=1777 strata-shm "$M/dev/shm"; fi
mount -t tmpfs -o nosuid,nodev,mode=1777 strata-tmp "$M/tmp"
: > "$M/tmp/.strata-env"
mount --bind "$R/env" "$M/tmp/.strata-env"
if [ -f /etc/resolv.conf ] && [ -f "$M/etc/resolv.conf" ] && [ ! -L "$M/etc/resolv.conf" ]; then
  mount --bind -o ro /etc/resolv.conf "$M/etc/resolv.conf"
fi
if [ -n "$STRATA_SB_MASK" ] && [ -d "$M$STRATA_SB_MASK" ] && [ ! -L "$M$STRATA_SB_MASK" ]; then
  mount -t tmpfs -o ro,size=4k,mode=0755 strata-mask "$M$STRATA_SB_MASK"
fi
[ -x "$M/bin/sh" ] || { echo "no /bin/sh in the step's filesystem" >&2; exit 1; }
set -- "$STRATA_SB_CWD" "$STRATA_SB_SCRIPT" "$STRATA_SB_NAME"
CHROOT=$STRATA_SB_CHROOT
PATH=$STRATA_SB_PATH
unset STRATA_SB_RUN STRATA_SB_LOWER STRATA_SB_HOSTBASE STRATA_SB_MASK STRATA_SB_CWD STRATA_SB_SCRIPT STRATA_SB_NAME STRATA_SB_PATH STRATA_SB_CHROOT
: > "$R/ready"
exec 2>&9 9>&-
cd /
set +e
"$CHROOT" "$M" /bin/sh -c 'cd -- "$1" 2>/dev/null || { echo "strata: cwd $1 does not exist in the step'"'"'s filesystem" >&2; exit 125; }; exec /bin/sh -e -c "$2" "$3"' strata-step "$@"
exit $?
`

let tools: { setpriv: string, unshare: string, chroot: string } | undefined

function findTool (name: string): string {
  for (const dir of HOST_PATH.split(':')) {
    try {
      accessSync(`${dir}/${name}`, constants.X_OK)
      return `${dir}/${name}`
    } catch {
      // not here
    }
  }
  throw new SandboxError('-', `${name} not found on the host (it comes with util-linux / coreutils)`)
}

/**
 * The stack without repeats, keeping each layer's top-most place. Two steps can
 * produce the same layer (both empty, say) and OverlayFS refuses a dir listed twice;
 * the lower copy adds nothing, since every entry of it is already present above.
 */
export function uniqueLayers (lowers: readonly string[]): string[] {
  return [...new Set(lowers)]
}

/** Prepares `runDir` (l/ u/ w/ m/ b/ e/ env) for a step over `lowers`. */
export async function prepareRunDir (runDir: string, allLowers: readonly string[], base: string): Promise<string> {
  const lowers = uniqueLayers(allLowers)
  if (lowers.length > MAX_LOWER_LAYERS) throw new ChainTooLongError(lowers.length, MAX_LOWER_LAYERS)
  for (const d of ['l', 'u', 'w', 'm', 'b', 'e']) await mkdir(`${runDir}/${d}`, { recursive: true, mode: 0o755 })
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
 * Runs the step's command in a private mount and pid namespace, chrooted into the
 * overlay of `lowers` over the base. Cancellation and timeout send SIGTERM to the
 * step's process group, then after `killGraceMs` SIGKILL to the namespace's pid 1,
 * which makes the kernel kill every process left in the namespace (including
 * ones that left the process group) and drops every mount with the namespace.
 */
export async function runSandbox (spec: SandboxSpec, lowerOption: string): Promise<SandboxResult> {
  tools ??= { setpriv: findTool('setpriv'), unshare: findTool('unshare'), chroot: findTool('chroot') }
  spec.signal?.throwIfAborted()
  const hostBase = spec.base === '/'
  const env: Record<string, string> = {
    ...spec.env,
    STRATA_ENV: STRATA_ENV_PATH,
    STRATA_SB_PATH: spec.env.PATH ?? HOST_PATH,
    PATH: HOST_PATH,
    STRATA_SB_RUN: spec.runDir,
    STRATA_SB_LOWER: lowerOption,
    STRATA_SB_HOSTBASE: hostBase ? '1' : '',
    STRATA_SB_MASK: spec.mask ?? '',
    STRATA_SB_CWD: spec.cwd,
    STRATA_SB_SCRIPT: spec.run,
    STRATA_SB_NAME: spec.name,
    STRATA_SB_CHROOT: tools.chroot
  }
  const out = spec.output
  const passThrough = !out.prefix && out.stdout === process.stdout && out.stderr === process.stderr
  const started = performance.now()
  // setpriv --pdeathsig: if this process dies without cleaning up, unshare gets
  // SIGKILL, and --kill-child passes it on to the namespace's pid 1: no orphan step.
  const child = spawn(tools.setpriv, ['--pdeathsig', 'KILL', '--', tools.unshare, '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--', '/bin/sh', '-c', SETUP], {
    env,
    cwd: spec.runDir,
    detached: true, // its own process group: the target of SIGTERM
    stdio: ['ignore', passThrough ? 'inherit' : 'pipe', passThrough ? 'inherit' : 'pipe']
  })
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

/** Host pid of unshare's forked child: pid 1 of the step's pid namespace. */
function nsInitPid (unsharePid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim().split(/\s+/)[0]
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
