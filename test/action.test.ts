// The GitHub Actions composite action, run the way a runner runs it: each step's
// `run:` through `bash --noprofile --norc -eo pipefail FILE`, its `env:` with the
// action's expressions filled in, the GITHUB_* variables of a push and of a pull
// request, outputs read back from GITHUB_OUTPUT.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { parse } from 'yaml'
import { bin, workDir } from './helpers.ts'

const actionFile = join(import.meta.dirname, '..', '.github', 'actions', 'strata-run', 'action.yml')

interface Action {
  inputs: Record<string, { default?: string }>
  outputs: Record<string, { value: string }>
  runs: { using: string, steps: Array<{ id?: string, shell: string, run: string, env?: Record<string, string> }> }
}

/** Reads `name=value` and `name<<DELIM` ... `DELIM` lines, as the runner does. */
function readOutputs (file: string): Record<string, string> {
  const out: Record<string, string> = {}
  const lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n') : []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    const heredoc = /^([^=<]+)<<(.+)$/.exec(line)
    if (heredoc !== null) {
      const end = lines.indexOf(heredoc[2]!, i + 1)
      out[heredoc[1]!] = lines.slice(i + 1, end).join('\n')
      i = end
    } else if (line.includes('=')) out[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1)
  }
  return out
}

interface Run { status: number | null, output: string, outputs: Record<string, string> }

/** Runs the action's steps with `inputs` under `env` (the runner's variables), in `cwd`. */
function runAction (inputs: Record<string, string>, env: NodeJS.ProcessEnv, cwd: string, temp: string): Run {
  const action = parse(readFileSync(actionFile, 'utf8')) as Action
  assert.equal(action.runs.using, 'composite')
  const steps: Record<string, Record<string, string>> = {}
  const expr = (s: string): string => s.replace(/\$\{\{\s*([^}]+?)\s*\}\}/g, (_, e: string) => {
    const input = /^inputs\.([\w-]+)$/.exec(e)
    if (input !== null) {
      assert.ok(input[1]! in action.inputs, `input ${input[1]} is not declared`)
      return inputs[input[1]!] ?? action.inputs[input[1]!]!.default ?? ''
    }
    const output = /^steps\.([\w-]+)\.outputs\.([\w-]+)$/.exec(e)
    if (output !== null) return steps[output[1]!]?.[output[2]!] ?? ''
    return assert.fail(`the test does not evaluate \${{ ${e} }}`)
  })
  let output = ''
  for (const [i, step] of action.runs.steps.entries()) {
    assert.equal(step.shell, 'bash')
    // Inputs reach scripts through env only: an expression inside `run:` would be pasted into the script.
    assert.ok(!step.run.includes('${{'), `step ${i} has an expression in run:`)
    const script = join(temp, `step-${i}.sh`)
    writeFileSync(script, step.run)
    const outFile = join(temp, `output-${i}`)
    writeFileSync(outFile, '')
    const stepEnv = Object.fromEntries(Object.entries(step.env ?? {}).map(([k, v]) => [k, expr(String(v))]))
    const r = spawnSync('bash', ['--noprofile', '--norc', '-eo', 'pipefail', script], { cwd, encoding: 'utf8', timeout: 120_000, env: { ...env, GITHUB_OUTPUT: outFile, ...stepEnv } })
    output += r.stdout + r.stderr
    if (step.id !== undefined) steps[step.id] = readOutputs(outFile)
    if (r.status !== 0) return { status: r.status, output, outputs: {} }
  }
  const outputs = Object.fromEntries(Object.entries(action.outputs).map(([k, v]) => [k, expr(v.value)]))
  return { status: 0, output, outputs }
}

test('the strata-run action writes main on a push and pr/N on a pull request, which reads main and hits its layers; the writer key reaches strata in a 0600 file', { timeout: 240_000 }, (t) => {
  const dir = workDir(t, 'action')
  const workspace = join(dir, 'ws')
  const temp = join(dir, 'runner-temp')
  mkdirSync(workspace)
  mkdirSync(temp)
  const tag = `strata-action-${process.pid}-${Date.now()}`
  writeFileSync(join(workspace, 'strata.yml'), [
    'base: host',
    'steps:',
    '  - name: make',
    `    run: mkdir -p /opt/${tag} && echo made > /opt/${tag}/a`,
    '  - name: use',
    `    run: cat /opt/${tag}/a > /opt/${tag}/b`,
    ''
  ].join('\n'))
  // The `strata` the action runs: notes what it was given, then runs the CLI.
  const seen = join(dir, 'seen')
  const wrapper = join(dir, 'strata')
  writeFileSync(wrapper, [
    '#!/bin/sh',
    `: > ${seen}`,
    `if [ -n "$STRATA_WRITER_KEY_FILE" ]; then stat -c '%a' "$STRATA_WRITER_KEY_FILE" >> ${seen}; cat "$STRATA_WRITER_KEY_FILE" >> ${seen}; echo "$STRATA_WRITER_KEY_FILE" >> ${seen}; fi`,
    // Reading the key is the writer-key option's business, tested with it.
    'unset STRATA_WRITER_KEY_FILE',
    `exec ${process.execPath} ${bin} "$@"`,
    ''
  ].join('\n'))
  chmodSync(wrapper, 0o755)
  const base: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    CI: 'true',
    GITHUB_ACTIONS: 'true',
    GITHUB_WORKSPACE: workspace,
    RUNNER_TEMP: temp,
    GITHUB_ENV: join(temp, 'env'),
    GITHUB_REPOSITORY: 'example/app'
  }
  const inputs = { strata: wrapper, 'data-dir': join(dir, 'data'), 'writer-key': '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIN3rkey\n-----END PRIVATE KEY-----' }

  const push = runAction(inputs, { ...base, GITHUB_EVENT_NAME: 'push', GITHUB_REF: 'refs/heads/main', GITHUB_REF_NAME: 'main' }, workspace, temp)
  assert.equal(push.status, 0, push.output)
  assert.deepEqual(push.outputs, { scope: 'main', 'read-scopes': 'main' })
  assert.match(push.output, /^make: MISS/m)
  assert.match(push.output, /^use: MISS/m)
  const [mode, ...rest] = readFileSync(seen, 'utf8').trimEnd().split('\n')
  assert.equal(mode, '600')
  assert.equal(rest.slice(0, -1).join('\n'), inputs['writer-key'])
  assert.ok(!existsSync(rest.at(-1)!), 'the key file is removed after the run')

  const event = join(temp, 'event.json')
  writeFileSync(event, JSON.stringify({ action: 'synchronize', number: 42, pull_request: { number: 42, head: { ref: 'feature' }, base: { ref: 'main' } } }))
  const pr = runAction({ ...inputs, 'writer-key': '' }, { ...base, GITHUB_EVENT_NAME: 'pull_request', GITHUB_EVENT_PATH: event, GITHUB_REF: 'refs/pull/42/merge', GITHUB_REF_NAME: '42/merge', GITHUB_HEAD_REF: 'feature', GITHUB_BASE_REF: 'main' }, workspace, temp)
  assert.equal(pr.status, 0, pr.output)
  assert.deepEqual(pr.outputs, { scope: 'pr/42', 'read-scopes': 'pr/42,main' })
  assert.match(pr.output, /^make: HIT local/m)
  assert.match(pr.output, /^use: HIT local/m)
  assert.equal(readFileSync(seen, 'utf8'), '', 'no writer key: nothing passed')

  // Read from the payload, not the ref: a pull_request_target runs on the base branch's ref.
  writeFileSync(event, JSON.stringify({ number: 7, pull_request: { number: 7 } }))
  const target = runAction({ ...inputs, 'writer-key': '' }, { ...base, GITHUB_EVENT_NAME: 'pull_request_target', GITHUB_EVENT_PATH: event, GITHUB_REF: 'refs/heads/main' }, workspace, temp)
  assert.equal(target.status, 0, target.output)
  assert.deepEqual(target.outputs, { scope: 'pr/7', 'read-scopes': 'pr/7,main' })

  // Another branch writes its own scope and reads main's.
  const branch = runAction({ ...inputs, 'writer-key': '' }, { ...base, GITHUB_EVENT_NAME: 'push', GITHUB_REF: 'refs/heads/release/1.x', GITHUB_REF_NAME: 'release/1.x' }, workspace, temp)
  assert.equal(branch.status, 0, branch.output)
  assert.deepEqual(branch.outputs, { scope: 'release/1.x', 'read-scopes': 'release/1.x,main' })
  assert.match(branch.output, /^make: HIT local/m)
})
