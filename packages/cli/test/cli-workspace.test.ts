import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type { TestContext } from 'node:test'

const run = promisify(execFile)
const STRATA = fileURLToPath(new URL('../bin/strata.js', import.meta.url))

/** A project dir and a data dir apart from each other (the workspace must not hold the data dir), removed after the test. */
function setup (t: TestContext): { root: string, proj: string, data: string } {
  const root = mkdtempSync('/var/tmp/strata-cli-workspace-')
  t.after(() => rmSync(root, { recursive: true, force: true }))
  const proj = `${root}/proj`
  mkdirSync(proj)
  return { root, proj, data: `${root}/data` }
}

async function strata (args: string[], cwd: string): Promise<{ stdout: string, stderr: string }> {
  // The caller's scope, salt or epoch would change what the runs see.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STRATA_')))
  return await run(process.execPath, [STRATA, ...args], { cwd, env, maxBuffer: 16 * 1024 * 1024 })
}

test('strata run: a checkout copied elsewhere hits every step; why names the workspace file that changed', async (t) => {
  const { root, proj, data } = setup(t)
  writeFileSync(`${proj}/package.json`, '{"name":"app"}')
  writeFileSync(`${proj}/main.c`, 'int main(void) { return 0; }\n')
  writeFileSync(`${proj}/strata.yml`, `base: host
steps:
  - name: deps
    filter: [package.json]
    run: mkdir -p node_modules && cp package.json node_modules/marker
  - name: build
    run: test -f node_modules/marker && cat main.c > out.txt
`)
  const first = await strata(['run', '--data-dir', data], proj)
  assert.match(first.stderr, /^deps: MISS/m)
  assert.match(first.stderr, /^build: MISS/m)

  cpSync(proj, `${root}/copy`, { recursive: true })
  const again = await strata(['run', '--data-dir', data], `${root}/copy`)
  assert.match(again.stderr, /^deps: HIT local/m)
  assert.match(again.stderr, /^build: HIT local/m)

  writeFileSync(`${root}/copy/main.c`, 'int main(void) { return 1; }\n')
  const why = await strata(['why', 'build', '--data-dir', data], `${root}/copy`)
  assert.match(why.stdout, /^deps: would HIT$/m)
  assert.match(why.stdout, /^build: would MISS\n {2}- workspace file main\.c changed content$/m)
})

test('strata run: a filter pattern or input glob that matches nothing is a warning on the step\'s line and in --json', async (t) => {
  const { proj, data } = setup(t)
  writeFileSync(`${proj}/package.json`, '{}')
  writeFileSync(`${proj}/strata.yml`, `base: host
steps:
  - name: deps
    filter: [package.json, pakage-lock.json]
    inputs: ["/etc/strata-cli-none/*.conf"]
    run: "true"
`)
  const text = await strata(['run', '--data-dir', data], proj)
  assert.match(text.stderr, /^deps: MISS .*\[warning: input glob \/etc\/strata-cli-none\/\*\.conf matches nothing\] \[warning: filter pattern pakage-lock\.json matches nothing in the workspace\]$/m)
  const json = await strata(['run', '--data-dir', data, '--json'], proj)
  const key = json.stdout.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { type: string, warnings?: string[] }).find((e) => e.type === 'key')
  assert.deepEqual(key?.warnings, ['input glob /etc/strata-cli-none/*.conf matches nothing', 'filter pattern pakage-lock.json matches nothing in the workspace'])
  const why = await strata(['why', 'deps', '--data-dir', data, '--json'], proj)
  assert.deepEqual((JSON.parse(why.stdout) as { steps: Array<{ warnings: string[] }> }).steps[0]!.warnings, key?.warnings)
})
