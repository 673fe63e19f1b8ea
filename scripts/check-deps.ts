/**
 * Compares each workspace package's declared dependencies with the bare imports
 * under its src/: a package imported but not declared, or declared but never
 * imported, is reported and the script exits 1. Run: `npx node scripts/check-deps.ts`.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { builtinModules } from 'node:module'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const IMPORT = /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s+['"]([^'"]+)['"]/gm

function files (dir: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(dir)) {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) out.push(...files(path))
    else if (/\.(ts|js|mjs|cjs)$/.test(name)) out.push(path)
  }
  return out
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageOf (specifier: string): string {
  const parts = specifier.split('/')
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!
}

let bad = 0
for (const dir of readdirSync(join(root, 'packages'))) {
  const pkgPath = join(root, 'packages', dir, 'package.json')
  let pkg: { name: string, dependencies?: Record<string, string>, peerDependencies?: Record<string, string> }
  try {
    pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as typeof pkg
  } catch {
    continue
  }
  const declared = new Set([...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})])
  const imported = new Set<string>()
  let src: string[] = []
  try {
    src = files(join(root, 'packages', dir, 'src'))
  } catch {
    // no src/: nothing imported
  }
  for (const file of src) {
    for (const m of readFileSync(file, 'utf8').matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3]!
      if (spec.startsWith('.') || spec.startsWith('/') || spec.startsWith('node:') || spec.startsWith('#') || builtinModules.includes(spec)) continue
      const name = packageOf(spec)
      if (name !== pkg.name) imported.add(name)
    }
  }
  const missing = [...imported].filter((n) => !declared.has(n)).sort()
  const unused = [...declared].filter((n) => !imported.has(n)).sort()
  if (missing.length > 0) process.stdout.write(`${pkg.name}: imported but not declared: ${missing.join(', ')}\n`)
  if (unused.length > 0) process.stdout.write(`${pkg.name}: declared but not imported under src/: ${unused.join(', ')}\n`)
  bad += missing.length + unused.length
}
process.exitCode = bad > 0 ? 1 : 0
