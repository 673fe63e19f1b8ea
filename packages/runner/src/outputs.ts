import { randomBytes } from 'node:crypto'
import { lchownSync, lstatSync, mkdirSync, renameSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { basename, dirname, posix } from 'node:path'
import type { Logger } from 'pino'
import { baseRoot } from './base.ts'
import type { Chain } from './chain.ts'
import type { RunnerContext } from './context.ts'
import { OutputNotFoundError, OutputUnsafeError, StepCancelledError } from './errors.ts'
import type { Emit } from './events.ts'
import type { Pipeline, StepSpec } from './pipeline.ts'
import { copyTree, planTree } from './tree-copy.ts'
import type { CopyPlan } from './tree-copy.ts'
import { LayeredView } from './view.ts'

/** Where a step's outputs are read (in its view) and written (on the host). */
export interface OutputPlaces {
  /** Absolute dir in the step's view that output paths are relative to. */
  viewDir: string
  /** Absolute host dir they are written under, at the same relative path. */
  hostDir: string
  /** The checkout: nothing is written outside it. */
  hostRoot: string
  /** With a workspace: where steps see the checkout; outputs are then read from the layers' subtree there over the checkout. */
  workspace?: string
}

/**
 * The one place that decides where outputs live: for now the step's cwd in its
 * view, and on the host the same dir (host base) or strata.yml's dir (rootfs base).
 * A workspace mounted at a fixed path redirects both here.
 */
export function outputPlaces (pipeline: Pick<Pipeline, 'file' | 'base' | 'workspace'>, step: Pick<StepSpec, 'cwd'>): OutputPlaces {
  // Paths relative to the workspace root, in the view as on the host.
  if (pipeline.workspace !== undefined) return { viewDir: '/', hostDir: pipeline.workspace.dir, hostRoot: pipeline.workspace.dir, workspace: pipeline.workspace.path }
  const hostRoot = pipeline.file !== undefined ? dirname(pipeline.file) : process.cwd()
  if (pipeline.base.kind === 'host') return { viewDir: step.cwd, hostDir: step.cwd, hostRoot }
  return { viewDir: step.cwd, hostDir: hostRoot, hostRoot }
}

/**
 * The filesystem outputs are read from: `layers` (newest first, the step's own on
 * top) over `base`, merged as OverlayFS merges them. With a workspace mounted from
 * the checkout, this is where its layers' subtree goes over the checkout.
 */
export function outputView (places: OutputPlaces, layers: readonly string[], base: string): LayeredView {
  if (places.workspace !== undefined) {
    // Only the layers that changed something in the workspace have its dir.
    const dirs = layers.map((l) => `${l}${places.workspace!}`).filter((d) => lstatSync(d, { throwIfNoEntry: false })?.isDirectory() === true)
    return new LayeredView(dirs, places.hostRoot)
  }
  return new LayeredView(layers, base)
}

const within = (p: string, dir: string): boolean => p === dir || p.startsWith(dir === '/' ? '/' : `${dir}/`)

export interface OutputsDelivered {
  paths: string[]
  /** Files, dirs and symlinks written. */
  entries: number
  /** Bytes of file content written. */
  bytes: number
}

/**
 * Checks that every output exists in `view` and that nothing in it leads out of
 * the workspace; returns what would be copied. Throws OutputNotFoundError or
 * OutputUnsafeError. Reads the layer dirs only: nothing is written.
 */
export async function planOutputs (step: string, view: LayeredView, places: OutputPlaces, paths: readonly string[], opts: { signal?: AbortSignal | undefined } = {}): Promise<CopyPlan[]> {
  const plans: CopyPlan[] = []
  for (const p of paths) {
    const viewPath = posix.join(places.viewDir, p)
    // Every component below the workspace must be a real directory: a symlink there could lead anywhere.
    const parts = p.split('/')
    for (let i = 1; i < parts.length; i++) {
      const prefix = posix.join(places.viewDir, ...parts.slice(0, i))
      const e = view.lstat(prefix)
      if (e === undefined) throw new OutputNotFoundError(step, p)
      if (e.stats.isSymbolicLink()) throw new OutputUnsafeError(step, p, `${prefix} is a symlink in the step's filesystem`)
      if (!e.stats.isDirectory()) throw new OutputNotFoundError(step, p)
    }
    if (view.lstat(viewPath) === undefined) throw new OutputNotFoundError(step, p)
    plans.push(await planTree(view, viewPath, {
      ...opts,
      // A link is written as it is: its target must resolve inside the workspace, and on the host to the same place.
      checkLink: (link, target) => linkProblem(places, link, target),
      unsafe: (path, why) => new OutputUnsafeError(step, posix.relative(places.viewDir, path), why)
    }))
  }
  return plans
}

/**
 * Copies each output from the step's view to the host workspace at the same
 * relative path, replacing what was there: each is written beside its place first
 * and renamed over it, so a reader sees the old output or the new one. Modes
 * (less setuid/setgid) and times are kept; owners become the host dir's owner.
 * Never follows a symlink on the host.
 */
export async function deliverOutputs (step: string, view: LayeredView, places: OutputPlaces, paths: readonly string[], opts: { signal?: AbortSignal | undefined, log?: Logger, mask?: string } = {}): Promise<OutputsDelivered> {
  for (const p of paths) {
    const dest = posix.join(places.hostDir, p)
    // A host-base step may have its cwd anywhere: outputs still land only in the checkout.
    if (!within(dest, places.hostRoot)) throw new OutputUnsafeError(step, p, `${dest} is outside the checkout ${places.hostRoot}`)
    if (opts.mask !== undefined && (within(dest, opts.mask) || within(opts.mask, dest))) throw new OutputUnsafeError(step, p, `${dest} would reach strata's data dir`)
  }
  const plans = await planOutputs(step, view, places, paths, opts)
  // The checkout's owner: the CI user who uploads or deletes them.
  const owner = lstatSync(places.hostRoot)
  let entries = 0
  let bytes = 0
  for (const [i, p] of paths.entries()) {
    const dest = posix.join(places.hostDir, p)
    hostParents(step, places.hostRoot, posix.relative(places.hostRoot, dest), p, owner)
    const tag = randomBytes(6).toString('hex')
    const staging = `${dirname(dest)}/.${basename(dest)}.strata-${tag}`
    const old = `${dirname(dest)}/.${basename(dest)}.strata-old-${tag}`
    try {
      const n = await copyTree(plans[i]!, staging, { ...opts, owner: { uid: owner.uid, gid: owner.gid }, stripSetid: true })
      entries += n.entries
      bytes += n.bytes
      let replaced = false
      try {
        renameSync(dest, old)
        replaced = true
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
      renameSync(staging, dest)
      if (replaced) await rm(old, { recursive: true, force: true })
    } finally {
      await rm(staging, { recursive: true, force: true })
    }
  }
  opts.log?.debug({ step, paths, entries, bytes }, 'outputs delivered')
  return { paths: [...paths], entries, bytes }
}

/** Makes the host dirs between the checkout and `rel` (output `p`), refusing a symlink or non-dir on the way. */
function hostParents (step: string, hostRoot: string, rel: string, p: string, owner: { uid: number, gid: number }): void {
  const parts = rel.split('/').slice(0, -1)
  let dir = hostRoot
  for (const c of parts) {
    dir = `${dir}/${c}`
    let st
    try {
      st = lstatSync(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      mkdirSync(dir, { mode: 0o755 })
      lchownSync(dir, owner.uid, owner.gid)
      continue
    }
    if (st.isSymbolicLink()) throw new OutputUnsafeError(step, p, `${dir} is a symlink on the host`)
    if (!st.isDirectory()) throw new OutputUnsafeError(step, p, `${dir} is not a directory on the host`)
  }
}

/** Why a symlink at view path `link` with `target` may not be written, or undefined when it may. */
function linkProblem (places: OutputPlaces, link: string, target: string): string | undefined {
  if (places.workspace !== undefined) {
    // The view is rooted at the workspace: `..` past its root must not clamp there, so resolve under a root no path has.
    if (target.startsWith('/')) {
      const ws = places.workspace
      const norm = posix.normalize(target)
      return norm === ws || norm.startsWith(`${ws}/`)
        ? `symlink ${link} -> ${target} is absolute: on the host it would point elsewhere (make it relative)`
        : `symlink ${link} -> ${target} leads out of the workspace`
    }
    const root = '/\0workspace'
    const r = posix.resolve(root + posix.dirname(link), target)
    return r === root || r.startsWith(`${root}/`) ? undefined : `symlink ${link} -> ${target} leads out of the workspace`
  }
  const inside = (p: string): boolean => p === places.viewDir || p.startsWith(`${places.viewDir === '/' ? '' : places.viewDir}/`)
  if (target.startsWith('/')) {
    if (!inside(posix.normalize(target))) return `symlink ${link} -> ${target} leads out of the workspace`
    if (places.viewDir !== places.hostDir) return `symlink ${link} -> ${target} is absolute: on the host it would point elsewhere (make it relative)`
    return undefined
  }
  if (!inside(posix.resolve(posix.dirname(link), target))) return `symlink ${link} -> ${target} leads out of the workspace`
  return undefined
}

/** Copies the outputs of the step just done (the top of `chain`) into the host workspace; a problem fails the step. */
export async function deliverStepOutputs (ctx: RunnerContext, chain: Chain, step: StepSpec, places: OutputPlaces, opts: { signal?: AbortSignal | undefined, onEvent?: Emit | undefined }): Promise<void> {
  const t0 = performance.now()
  try {
    const view = outputView(places, chain.layers, baseRoot(chain.base))
    const done = await deliverOutputs(step.name, view, places, step.outputs ?? [], { signal: opts.signal, log: ctx.log, mask: ctx.dataDir })
    opts.onEvent?.({ type: 'outputs', step: step.name, paths: done.paths, entries: done.entries, bytes: done.bytes, durationMs: performance.now() - t0 })
  } catch (err) {
    const e = opts.signal?.aborted === true ? new StepCancelledError(step.name, { cause: err }) : err as Error
    const key = chain.parent?.toString()
    opts.onEvent?.({ type: 'failed', step: step.name, ...(key !== undefined ? { key } : {}), reason: e instanceof StepCancelledError ? 'cancel' : 'error', exitCode: null, signal: null, durationMs: performance.now() - t0, error: e })
    throw e
  }
}
