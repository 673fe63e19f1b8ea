// The checkout of the graph benchmark (graph.ts), built offline in a scratch dir:
// a local .deb for a `dpkg -i` step, an npm project whose dependencies are tarballs
// of packages installed in this repo's node_modules (so `npm ci --offline` needs no
// registry), a wheel of a generated Python package (`pip install --no-index`), and
// the sources of a build and a test step that use both.

import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const REPO = fileURLToPath(new URL('../../', import.meta.url))

/**
 * Packages the npm project depends on, with every package they need. A root whose
 * closure needs two versions of one package, or a package not installed here, is
 * left out (the project is flat: one version per name).
 */
export const NPM_ROOTS = ['typescript', '@types/node', 'libp2p', '@libp2p/kad-dht', '@libp2p/tcp', '@libp2p/identify', '@libp2p/gossipsub',
  '@chainsafe/libp2p-noise', 'pino', 'yaml', 'fast-check', 'prom-client', 'classic-level', '@ipld/dag-cbor']

export const DEB_NAME = 'strata-bench-tools'
export const PY_NAME = 'benchpy'

export class FixtureToolError extends Error {
  override name = 'FixtureToolError'
  readonly code = 'BENCH_FIXTURE_TOOL'
}

function sh (cmd: string, args: string[], cwd?: string, env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { cwd, env: env ?? process.env, encoding: 'utf8', maxBuffer: 64 << 20 })
  if (r.status !== 0) throw new FixtureToolError(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`}): ${(r.stderr ?? '').trim().split('\n').slice(-5).join(' | ')}`)
  return r.stdout
}

interface Manifest {
  name: string
  version: string
  dependencies?: Record<string, string>
  optionalDependencies?: Record<string, string>
  peerDependencies?: Record<string, string>
  peerDependenciesMeta?: Record<string, { optional?: boolean }>
}

/** Where node would find package `name` from `fromDir` (a package's real directory), or undefined. */
function resolvePackage (name: string, fromDir: string): string | undefined {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name)
    if (existsSync(join(candidate, 'package.json'))) return realpathSync(candidate)
    if (dirname(dir) === dir) return undefined
  }
}

interface Pkg { name: string, version: string, dir: string }

/** The packages `root` needs (itself included), or the reason it cannot be vendored flat. */
function closure (root: string): { pkgs: Pkg[] } | { reason: string } {
  const start = resolvePackage(root, REPO)
  if (start === undefined) return { reason: 'not installed' }
  const seen = new Map<string, Pkg>()
  const todo = [start]
  while (todo.length > 0) {
    const dir = todo.pop()!
    const m = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Manifest
    const had = seen.get(m.name)
    if (had !== undefined) {
      if (had.version !== m.version) return { reason: `needs ${m.name} ${had.version} and ${m.version}` }
      continue
    }
    seen.set(m.name, { name: m.name, version: m.version, dir })
    const optionalPeers = new Set(Object.entries(m.peerDependenciesMeta ?? {}).filter(([, v]) => v.optional === true).map(([k]) => k))
    const needed = [...Object.keys(m.dependencies ?? {}), ...Object.keys(m.optionalDependencies ?? {}), ...Object.keys(m.peerDependencies ?? {}).filter((p) => !optionalPeers.has(p))]
    for (const dep of needed) {
      const found = resolvePackage(dep, dir)
      if (found === undefined) return { reason: `${m.name} needs ${dep}, not installed` }
      todo.push(found)
    }
  }
  return { pkgs: [...seen.values()] }
}

/** Union of the roots' closures that agree on every version. */
export function npmPackages (roots: string[]): { pkgs: Pkg[], skipped: string[] } {
  const all = new Map<string, Pkg>()
  const skipped: string[] = []
  for (const root of roots) {
    const c = closure(root)
    if ('reason' in c) { skipped.push(`${root} (${c.reason})`); continue }
    const clash = c.pkgs.find((p) => all.has(p.name) && all.get(p.name)!.version !== p.version)
    if (clash !== undefined) { skipped.push(`${root} (needs ${clash.name} ${clash.version}, another root ${all.get(clash.name)!.version})`); continue }
    for (const p of c.pkgs) all.set(p.name, p)
  }
  return { pkgs: [...all.values()].sort((a, b) => a.name.localeCompare(b.name)), skipped }
}

function countFiles (dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) n += countFiles(join(dir, e.name))
    else n++
  }
  return n
}

export interface Checkout {
  dir: string
  npm: { packages: number, files: number, skipped: string[] }
  py: { modules: number }
  debFiles: number
}

/**
 * Writes the checkout (everything but strata.yml) into `dir`. `npmCache` is a scratch
 * dir for the untimed `npm install --package-lock-only` that writes the lockfile.
 */
export function buildCheckout (dir: string, scratch: string, opts: { pyModules: number, debFiles: number }): Checkout {
  mkdirSync(dir, { recursive: true })

  // The .deb: data files and a tool in /usr/bin.
  const debRoot = join(scratch, 'deb-root')
  const share = join(debRoot, 'usr', 'share', DEB_NAME)
  mkdirSync(join(debRoot, 'DEBIAN'), { recursive: true })
  mkdirSync(join(debRoot, 'usr', 'bin'), { recursive: true })
  mkdirSync(share, { recursive: true })
  for (let i = 0; i < opts.debFiles; i++) writeFileSync(join(share, `table-${i}.txt`), Array.from({ length: 200 }, (_, k) => `${i} ${k} ${(i * 7919 + k * 104729) % 65521}`).join('\n') + '\n')
  writeFileSync(join(debRoot, 'usr', 'bin', 'strata-bench-tool'), `#!/bin/sh\ncat /usr/share/${DEB_NAME}/table-*.txt | wc -l\n`, { mode: 0o755 })
  writeFileSync(join(debRoot, 'DEBIAN', 'control'), [
    `Package: ${DEB_NAME}`, 'Version: 1.0', 'Architecture: all', 'Maintainer: strata <strata@localhost>',
    'Description: data for the strata graph benchmark', ''
  ].join('\n'))
  mkdirSync(join(dir, 'vendor', 'deb'), { recursive: true })
  sh('dpkg-deb', ['-Zgzip', '--root-owner-group', '--build', debRoot, join(dir, 'vendor', 'deb', `${DEB_NAME}_1.0_all.deb`)])

  // npm: one tarball per package (a package/ top dir, as npm packs), all top-level deps.
  const { pkgs, skipped } = npmPackages(NPM_ROOTS)
  const tgzDir = join(dir, 'vendor', 'npm')
  mkdirSync(tgzDir, { recursive: true })
  const deps: Record<string, string> = {}
  let files = 0
  for (const p of pkgs) {
    const file = `${p.name.replace('/', '-').replace('@', '')}-${p.version}.tgz`
    sh('tar', ['-czf', join(tgzDir, file), '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner',
      '--exclude=./node_modules', '--transform', 's,^\\.,package,', '-C', p.dir, '.'])
    files += countFiles(p.dir) - (existsSync(join(p.dir, 'node_modules')) ? countFiles(join(p.dir, 'node_modules')) : 0)
    deps[p.name] = `file:vendor/npm/${file}`
  }
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'graph-bench-app', version: '1.0.0', private: true, type: 'module', dependencies: deps }, null, 2) + '\n')
  sh('/usr/bin/npm', ['install', '--package-lock-only', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--cache', join(scratch, 'npm-cache'), '--loglevel=error'], dir)

  // Python: a generated package with a few hundred modules, as a wheel.
  const pySrc = join(scratch, 'py-src')
  const pkgDir = join(pySrc, PY_NAME)
  mkdirSync(pkgDir, { recursive: true })
  const subs = Math.max(1, Math.ceil(opts.pyModules / 50))
  for (let s = 0; s < subs; s++) {
    const sub = join(pkgDir, `part${s}`)
    mkdirSync(sub, { recursive: true })
    writeFileSync(join(sub, '__init__.py'), '')
    for (let m = s * 50; m < Math.min(opts.pyModules, (s + 1) * 50); m++) {
      writeFileSync(join(sub, `mod${m}.py`), [
        `"""Generated module ${m}."""`, '', 'import math', '',
        ...Array.from({ length: 20 }, (_, f) => `def f${f}(x):\n    """Function ${f} of module ${m}."""\n    return math.fsum([x * ${f + 1}, ${m}, math.sqrt(abs(x) + ${f})])\n`),
        `TABLE = [${Array.from({ length: 40 }, (_, k) => (m * 31 + k * 17) % 997).join(', ')}]`, ''
      ].join('\n'))
    }
  }
  writeFileSync(join(pkgDir, '__init__.py'), `PARTS = ${subs}\nMODULES = ${opts.pyModules}\n\n\ndef total():\n    import importlib\n    return sum(sum(importlib.import_module(f"${PY_NAME}.part{m // 50}.mod{m}").TABLE) for m in range(MODULES))\n`)
  writeFileSync(join(pySrc, 'pyproject.toml'), [
    '[build-system]', 'requires = ["setuptools"]', 'build-backend = "setuptools.build_meta"', '',
    '[project]', `name = "${PY_NAME}"`, 'version = "1.0.0"', '',
    '[tool.setuptools.packages.find]', `include = ["${PY_NAME}*"]`, ''
  ].join('\n'))
  const wheels = join(dir, 'vendor', 'wheels')
  mkdirSync(wheels, { recursive: true })
  sh('/usr/bin/python3', ['-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '--disable-pip-version-check', '--no-cache-dir', '-q', '-w', wheels, pySrc])
  writeFileSync(join(dir, 'requirements.txt'), `${PY_NAME}==1.0.0\n`)

  // The build: TypeScript compiled with tsc, the YAML config parsed, a Python summary.
  mkdirSync(join(dir, 'src'), { recursive: true })
  mkdirSync(join(dir, 'test'), { recursive: true })
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', strict: true, outDir: 'dist', skipLibCheck: true, types: ['node'] },
    include: ['src/**/*.ts']
  }, null, 2) + '\n')
  writeFileSync(join(dir, 'src', 'config.yml'), 'service: graph-bench\nreplicas: 3\nlimits: { cpu: 2, memory: 512 }\n')
  writeFileSync(join(dir, 'src', 'app.ts'), [
    "import { readFileSync } from 'node:fs'",
    "import { parse } from 'yaml'",
    "import { CID } from 'multiformats/cid'",
    "import { sha256 } from 'multiformats/hashes/sha2'",
    '',
    'export interface Config { service: string, replicas: number, limits: { cpu: number, memory: number } }',
    '',
    'export function load (path: string): Config {',
    "  return parse(readFileSync(path, 'utf8')) as Config",
    '}',
    '',
    'export async function digest (path: string): Promise<string> {',
    '  return CID.createV1(0x55, await sha256.digest(readFileSync(path))).toString()',
    '}',
    ''
  ].join('\n'))
  writeFileSync(join(dir, 'src', 'build.py'), [
    'import json, os, sys',
    `import ${PY_NAME}`,
    'os.makedirs("dist", exist_ok=True)',
    `json.dump({"total": ${PY_NAME}.total(), "python": sys.version.split()[0]}, open("dist/py.json", "w"))`,
    ''
  ].join('\n'))
  writeFileSync(join(dir, 'test', 'app.test.mjs'), [
    "import { test } from 'node:test'",
    "import assert from 'node:assert/strict'",
    "import { readFileSync } from 'node:fs'",
    "import { load, digest } from '../dist/app.js'",
    '',
    "test('the config loads', () => { assert.equal(load('src/config.yml').replicas, 3) })",
    "test('the config has a CID', async () => { assert.match(await digest('src/config.yml'), /^bafkrei/) })",
    "test('the python side built', () => { assert.ok(JSON.parse(readFileSync('dist/py.json', 'utf8')).total > 0) })",
    ''
  ].join('\n'))

  return { dir, npm: { packages: pkgs.length, files, skipped }, py: { modules: opts.pyModules }, debFiles: opts.debFiles }
}

/** Bytes of the files under `dir`. */
export function dirBytes (dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    n += e.isDirectory() ? dirBytes(p) : statSync(p).size
  }
  return n
}
