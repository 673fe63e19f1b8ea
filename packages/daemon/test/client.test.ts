import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'

const repo = fileURLToPath(new URL('../../..', import.meta.url))

/** The URLs of every module `specifier` loads, resolved in a fresh process from the repository root. */
function modulesLoadedBy (specifier: string): string[] {
  const script = [
    "import { registerHooks } from 'node:module'",
    'const seen = []',
    'registerHooks({ resolve (s, c, next) { const r = next(s, c); seen.push(r.url); return r } })',
    `await import(${JSON.stringify(specifier)})`,
    'process.stdout.write(JSON.stringify(seen))'
  ].join('\n')
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: repo, encoding: 'utf8', timeout: 60_000 })
  assert.equal(r.status, 0, r.stderr)
  return JSON.parse(r.stdout) as string[]
}

const RUNNER = /\/packages\/runner\//
const YAML = /\/node_modules\/yaml\//

test('the daemon client (strata status, strata gc) loads neither the runner nor YAML', () => {
  const loaded = modulesLoadedBy('@strata/daemon/client')
  assert.ok(loaded.some((u) => u.endsWith('/packages/daemon/src/client.ts')), 'the hook sees the client itself')
  assert.deepEqual(loaded.filter((u) => RUNNER.test(u) || YAML.test(u)), [])
  // The same hook does see both when the runner is loaded: the check above can fail.
  const runner = modulesLoadedBy('@strata/runner')
  assert.ok(runner.some((u) => RUNNER.test(u)) && runner.some((u) => YAML.test(u)))
})

test('the daemon loads no module of the runner', () => {
  assert.deepEqual(modulesLoadedBy('@strata/daemon').filter((u) => RUNNER.test(u) || YAML.test(u)), [])
})
