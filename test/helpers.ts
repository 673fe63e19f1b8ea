// What the CLI tests share: running `strata` as `npx strata` would, here or on a
// test cluster's host, and a working directory a step can see.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import type { Host } from '../scripts/netns.ts'

export const bin = join(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'strata.js')

// The scope settings of whoever runs the tests must not leak into them.
const HERMETIC: NodeJS.ProcessEnv = { STRATA_SCOPE: '', STRATA_READ_SCOPES: '', STRATA_EPOCH: '', STRATA_SALT: '' }

export interface CliResult { status: number | null, stdout: string, stderr: string }

/** Runs the CLI in this process's namespaces and waits for it. */
export function strata (args: string[], cwd?: string, env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd, timeout: 120_000, env: { ...process.env, ...HERMETIC, ...env } })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** Runs the CLI on a cluster host; a non-zero exit is a result, not an error. */
export async function strataOn (host: Host, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ exitCode: number | null, stdout: string, stderr: string }> {
  return await host.exec(process.execPath, [bin, ...args], { cwd, reject: false, timeout: 120_000, env: { ...process.env, ...HERMETIC, ...env } })
}

/** Waits until the daemon on `dataDir` answers and, if given, is connected to `peer`; returns its status. */
export async function daemonReady<S extends { peerId: string, peers: string[] }> (host: Host, dataDir: string, cwd: string, peer?: string): Promise<S> {
  const deadline = Date.now() + 30_000
  for (;;) {
    const r = await strataOn(host, ['status', '--json', '--data-dir', dataDir], cwd)
    if (r.exitCode === 0) {
      const s = JSON.parse(r.stdout) as S
      if (peer === undefined || s.peers.includes(peer)) return s
    }
    if (Date.now() > deadline) throw new Error(`daemon on ${host.name} not ready: ${r.stderr}`)
    await delay(200)
  }
}

/** A directory removed after the test. Steps get a fresh /tmp, so it lives under /var/tmp. */
export function workDir (t: { after: (fn: () => void) => void }, name: string): string {
  const dir = mkdtempSync(`/var/tmp/strata-${name}-`)
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A `strata daemon` on loopback for the data dir, stopped after the test; resolves once `strata status` answers. */
export async function startDaemonProcess (t: { after: (fn: () => Promise<void> | void) => void }, dataDir: string, env: NodeJS.ProcessEnv = {}): Promise<ChildProcess> {
  const child = spawn(process.execPath, [bin, 'daemon', '--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0', '--replicas', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  })
  const deadline = Date.now() + 30_000
  while (strata(['status', '--json', '--data-dir', dataDir]).status !== 0) {
    if (child.exitCode !== null) assert.fail(`daemon exited with ${child.exitCode}: ${stderr}`)
    if (Date.now() > deadline) assert.fail(`daemon not ready after 30 s: ${stderr}`)
    await delay(200)
  }
  return child
}
