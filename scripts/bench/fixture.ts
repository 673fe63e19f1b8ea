// Benchmark fixtures: pinned npm projects kept in the repo (package.json + lockfile
// only) and materialized on demand into a cache dir outside the repo.
//
//   node scripts/bench/fixture.ts [big-tree|big-tree-bump|npm-app]   prints path, file count, bytes
//
// big-tree: node_modules of >= 50k files and >= 300 MB for pack/unpack against tar.
// big-tree-bump: big-tree with one dependency moved one release (webpack), for the
//           dedup of a second node_modules layer against the first.
// npm-app:  a realistic app (~550 packages in the lockfile); the step-runner
//           benchmark runs its `npm ci` as a step, so use fixtureDir('npm-app').
//
// Debian packages for the step-runner benchmark's `apt-get install -y` step, none of
// them installed on the bookworm base image (checked with apt-cache show / dpkg-query,
// 2026-11): ripgrep fd-find shellcheck tree git-lfs — about 8 MB to download and
// 38 MB installed. That step needs a Debian mirror, unlike everything else here.

import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFile, lstat, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { removeNow, removeOnExit } from './cleanup.ts'

export type FixtureName = 'big-tree' | 'big-tree-bump' | 'npm-app'

export const DEFAULT_CACHE_DIR = '/var/tmp/strata-bench'

/** Written next to node_modules after a successful install; holds the lockfile's digest. */
const MARKER = '.strata-bench-complete'

/** The directory in the repo holding the fixture's package.json and package-lock.json. */
export function fixtureDir (name: FixtureName): string {
  return fileURLToPath(new URL(`./fixtures/${name}/`, import.meta.url))
}

/** Where fixtures and benchmark scratch space live: `$STRATA_BENCH_CACHE` or /var/tmp/strata-bench. */
export function cacheRoot (): string {
  return process.env.STRATA_BENCH_CACHE ?? DEFAULT_CACHE_DIR
}

/**
 * Installs the fixture with `npm ci --ignore-scripts` (only the npm registry is
 * reachable, so no install script may fetch binaries) into
 * `<cache>/<name>/node_modules`, once: a later call whose lockfile is unchanged
 * reuses it. Built in a staging dir and renamed into place, so an interrupted
 * install is never taken for a complete one.
 */
export async function materialize (name: FixtureName): Promise<string> {
  const source = fixtureDir(name)
  const lock = await readFile(join(source, 'package-lock.json'))
  const digest = createHash('sha256').update(lock).digest('hex')
  const target = join(cacheRoot(), name)
  const modules = join(target, 'node_modules')
  const marker = await readFile(join(target, MARKER), 'utf8').catch(() => null)
  if (marker?.trim() === digest) return modules

  await mkdir(cacheRoot(), { recursive: true })
  const staging = removeOnExit(`${target}.partial-${process.pid}`)
  try {
    await mkdir(staging)
    await copyFile(join(source, 'package.json'), join(staging, 'package.json'))
    await copyFile(join(source, 'package-lock.json'), join(staging, 'package-lock.json'))
    await run('npm', ['ci', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], staging)
    await writeFile(join(staging, MARKER), digest + '\n')
    await rm(target, { recursive: true, force: true })
    await rename(staging, target)
  } finally {
    removeNow(staging)
  }
  return modules
}

/** The big tree for pack/unpack benchmarks; see materialize(). */
export async function bigTree (): Promise<string> {
  return await materialize('big-tree')
}

/** The big tree after one dependency bump; see materialize(). */
export async function bumpedTree (): Promise<string> {
  return await materialize('big-tree-bump')
}

export interface TreeStats {
  /** Every entry below the root, as `find ROOT -mindepth 1 | wc -l` counts them. */
  entries: number
  files: number
  dirs: number
  symlinks: number
  /** Sum of regular file sizes. */
  bytes: number
}

export async function treeStats (root: string): Promise<TreeStats> {
  const stats: TreeStats = { entries: 0, files: 0, dirs: 0, symlinks: 0, bytes: 0 }
  const dirents = await readdir(root, { recursive: true, withFileTypes: true })
  for (const d of dirents) {
    stats.entries++
    if (d.isDirectory()) stats.dirs++
    else if (d.isSymbolicLink()) stats.symlinks++
    else if (d.isFile()) {
      stats.files++
      stats.bytes += (await lstat(join(d.parentPath, d.name))).size
    }
  }
  return stats
}

function run (cmd: string, args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] })
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      if (code === 0) resolve()
      else reject(new Error(`${cmd} ${args.join(' ')} failed in ${cwd} (${signal ?? `exit ${code}`})`))
    })
  })
}

if (import.meta.main) {
  const name = (process.argv[2] ?? 'big-tree') as FixtureName
  if (name !== 'big-tree' && name !== 'big-tree-bump' && name !== 'npm-app') {
    console.error(`unknown fixture ${name}; expected big-tree, big-tree-bump or npm-app`)
    process.exit(2)
  }
  const started = performance.now()
  const path = await materialize(name)
  const s = await treeStats(path)
  console.log(path)
  console.log(`entries ${s.entries} (files ${s.files}, dirs ${s.dirs}, symlinks ${s.symlinks}), ` +
    `bytes ${s.bytes} (${(s.bytes / 1e6).toFixed(1)} MB), ${((performance.now() - started) / 1000).toFixed(1)} s`)
}
