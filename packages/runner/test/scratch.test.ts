import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { once } from 'node:events'
import { pino } from 'pino'
import { isDiskFull, mountSpill } from '../src/scratch.ts'
import { harness } from './helpers.ts'

const spillAt = (dir: string): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir && l.includes(' - tmpfs strata-spill '))

test('a full disk is recognised by code or, for LevelDB, by its words, also as the cause of another error', () => {
  const enospc = Object.assign(new Error('ENOSPC: no space left on device, mkdir \'/x\''), { code: 'ENOSPC' })
  assert.equal(isDiskFull(enospc), true)
  assert.equal(isDiskFull(Object.assign(new Error('quota'), { code: 'EDQUOT' })), true)
  assert.equal(isDiskFull(new Error('cannot commit /x', { cause: new Error('IO error: /d/index/000003.log: No space left on device') })), true)
  assert.equal(isDiskFull(new Error('outer', { cause: new Error('middle', { cause: enospc }) })), true)
  assert.equal(isDiskFull(Object.assign(new Error('permission denied'), { code: 'EACCES' })), false)
  assert.equal(isDiskFull(new Error('cannot commit', { cause: new Error('bad manifest') })), false)
  assert.equal(isDiskFull(undefined), false)
})

test('scratch space left mounted by a process that died is unmounted by the next runner; a live one is left alone', async (t) => {
  const log = pino({ level: 'silent' })
  const live = await mountSpill(log)
  t.after(() => live.release())
  // A process that mounts scratch space, then is killed before it can unmount it.
  const child = spawn(process.execPath, ['--input-type=module', '-e', `
    const { mountSpill } = await import(${JSON.stringify(new URL('../src/scratch.ts', import.meta.url).href)})
    const quiet = { info () {}, warn () {} }
    const spill = await mountSpill(quiet)
    console.log(spill.dir)
    setInterval(() => {}, 1000)
  `], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  while (!out.includes('\n')) await once(child.stdout, 'data')
  const dead = out.trim()
  assert.equal(spillAt(dead), true)
  child.kill('SIGKILL')
  await once(child, 'close')
  // Should the sweep not take it, the test removes it.
  t.after(() => {
    if (spillAt(dead)) execFileSync('umount', ['-l', dead])
    rmSync(dead, { recursive: true, force: true })
  })
  assert.equal(spillAt(dead), true, 'the kernel unmounted it by itself')

  await harness(t)
  assert.equal(spillAt(dead), false, 'the dead process\'s scratch space is still mounted')
  assert.equal(existsSync(dead), false, 'its mount point is still there')
  assert.equal(spillAt(live.dir), true, 'a live process\'s scratch space was unmounted')
  await live.release()
  assert.equal(spillAt(live.dir), false)
  assert.equal(existsSync(live.dir), false)
})
