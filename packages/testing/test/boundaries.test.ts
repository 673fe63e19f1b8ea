import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { test } from 'node:test'

const PACKAGES = resolve(import.meta.dirname, '..', '..')

/** Every .ts file under `dir`, recursively. */
function tsFiles (dir: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(dir)) {
    const p = join(dir, name)
    if (name === 'node_modules') continue
    if (statSync(p).isDirectory()) out.push(...tsFiles(p))
    else if (name.endsWith('.ts')) out.push(p)
  }
  return out
}

/** The relative specifiers of a module: static imports and exports, and import() of a literal. */
function relativeSpecifiers (source: string): string[] {
  const found = source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)(['"])(\.{1,2}\/[^'"]*)\1/gm)
  return [...found].map((m) => m[2]!)
}

test('no package\'s tests import another package\'s test dir (shared helpers live in @strata/testing)', () => {
  const crossings: string[] = []
  for (const pkg of readdirSync(PACKAGES)) {
    const testDir = join(PACKAGES, pkg, 'test')
    if (!statSync(testDir, { throwIfNoEntry: false })?.isDirectory()) continue
    for (const file of tsFiles(testDir)) {
      for (const spec of relativeSpecifiers(readFileSync(file, 'utf8'))) {
        const [owner, second] = relative(PACKAGES, resolve(dirname(file), spec)).split(sep)
        if (owner !== pkg && second === 'test') crossings.push(`${relative(PACKAGES, file)} imports ${spec}`)
      }
    }
  }
  assert.deepEqual(crossings, [])
})

test('the check sees an import of another package\'s test dir', () => {
  // Built from pieces, so that the scan of this file does not take it for an import.
  const source = [
    ['import { buildTree }', 'from', "'../../chunker/test/helpers.ts'"],
    ['import type { Tree }', 'from', "'./helpers.ts'"],
    ['await import(', "'../x.ts')"]
  ].map((parts) => parts.join(' ')).join('\n')
  assert.deepEqual(relativeSpecifiers(source), ['../../chunker/test/helpers.ts', './helpers.ts', '../x.ts'])
})
