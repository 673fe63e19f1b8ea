// The step boundary, probed from inside a step as a hostile `run:` would. Each test
// matches a line of the README's "What a step can and cannot do".
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { tempDir } from '@strata/testing'
import { parsePipeline } from '../src/index.ts'
import { StepFailedError } from '../src/errors.ts'
import { harness, processesMatching, sideChannel } from './helpers.ts'
import type { Harness } from './helpers.ts'

/** What step `name` printed, without the prefix. */
function said (h: Harness, name: string): string[] {
  return h.out.text.split('\n').filter((l) => l.startsWith(`${name} | `)).map((l) => l.slice(name.length + 3))
}

/** A shell line that prints `label:done` when `cmd` succeeds, `label:refused` when it fails. */
const probe = (label: string, cmd: string): string => `if ${cmd} >/dev/null 2>&1; then echo ${label}:done; else echo ${label}:refused; fi`

test('the data dir and the identity key are not in the step\'s filesystem, and unmounting or binding cannot bring them back', async (t) => {
  const h = await harness(t)
  const key = `${h.dataDir}/identity.key`
  assert.ok(existsSync(key))
  // A filesystem mounted on the host is not in the view either: OverlayFS shows only the root filesystem.
  const other = mkdtempSync('/var/tmp/strata-sandbox-mnt-')
  execFileSync('mount', ['-t', 'tmpfs', 'strata-sandbox-test', other])
  t.after(() => {
    execFileSync('umount', [other])
    rmSync(other, { recursive: true, force: true })
  })
  writeFileSync(`${other}/x`, '')
  await h.runner.exec({
    name: 'hide',
    run: [
      probe('see-data', `test -e ${h.dataDir}`),
      probe('umount', `umount ${h.dataDir}`),
      probe('umount-lazy', `umount -l ${h.dataDir}`),
      probe('key', `head -1 ${key}`),
      'mkdir -p /mnt/r',
      probe('bind', 'mount --bind / /mnt/r'),
      probe('bound-key', `head -1 /mnt/r${key}`),
      probe('proc-root-key', `head -1 /proc/1/root${key}`),
      probe('parent-dir', `test -d ${h.dataDir.slice(0, h.dataDir.lastIndexOf('/'))}`),
      probe('other-fs', `test -e ${other}/x`)
    ].join('\n')
  })
  assert.deepEqual(said(h, 'hide'), ['see-data:refused', 'umount:refused', 'umount-lazy:refused', 'key:refused', 'bind:refused', 'bound-key:refused', 'proc-root-key:refused', 'parent-dir:done', 'other-fs:refused'])
})

test('a step cannot change the host\'s kernel or network settings through /proc, /sys or netlink', async (t) => {
  const h = await harness(t)
  const before = readFileSync('/proc/sys/vm/swappiness', 'utf8')
  const loMtu = readFileSync('/sys/class/net/lo/mtu', 'utf8').trim()
  const other = before.trim() === '37' ? '38' : '37'
  await h.runner.exec({
    name: 'sysctl',
    run: [
      probe('swappiness', `sh -c 'echo ${other} > /proc/sys/vm/swappiness'`),
      probe('sysrq', "sh -c 'echo h > /proc/sysrq-trigger'"),
      probe('sys', "sh -c 'echo 1 > /sys/kernel/mm/ksm/run'"),
      probe('remount-proc', 'mount -o remount,rw /proc/sys'),
      probe('kcore', 'test -s /proc/kcore'),
      probe('timer-list', 'grep -q . /proc/timer_list'),
      probe('keys', 'grep -q . /proc/keys'),
      // The same MTU again: harmless if it went through, but any link change needs NET_ADMIN.
      probe('net-admin', `ip link set lo mtu ${loMtu}`)
    ].join('\n')
  })
  assert.deepEqual(said(h, 'sysctl'), ['swappiness:refused', 'sysrq:refused', 'sys:refused', 'remount-proc:refused', 'kcore:refused', 'timer-list:refused', 'keys:refused', 'net-admin:refused'])
  assert.equal(readFileSync('/proc/sys/vm/swappiness', 'utf8'), before, 'the host value is unchanged')
})

test('the chroot escape (second chroot, then chdir .. and chroot .) stays inside the step\'s view', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const marker = `/var/tmp/strata-sandbox-escaped-${process.pid}`
  t.after(() => execFileSync('rm', ['-f', marker]))
  const py = String.raw`
import os
os.makedirs('/tmp/jail', exist_ok=True)
fd = os.open('/', os.O_RDONLY)
os.chroot('/tmp/jail')
os.fchdir(fd)
for _ in range(100):
    os.chdir('..')
os.chroot('.')
open('${marker}', 'w').write('escaped')
print('data:' + str(os.path.exists('${h.dataDir}')))
print('key:' + str(os.path.exists('${h.dataDir}/identity.key')))
`
  writeFileSync(`${side.dir}/escape.py`, py)
  await h.runner.exec({ name: 'escape', run: `/usr/bin/python3 ${side.dir}/escape.py` })
  assert.deepEqual(said(h, 'escape'), ['data:False', 'key:False'])
  assert.equal(existsSync(marker), false, 'the file was written inside the view, not on the host')
})

test('no host block device is reachable and no device node can be made', async (t) => {
  const h = await harness(t)
  const rootDev = execFileSync('findmnt', ['-n', '-o', 'SOURCE', '/'], { encoding: 'utf8' }).trim()
  assert.match(rootDev, /^\/dev\//)
  const { major, minor } = devNumbers(rootDev)
  await h.runner.exec({
    name: 'devices',
    run: [
      probe('read-root', `head -c 512 ${rootDev}`),
      probe('mknod-tmp', `mknod /tmp/disk b ${major} ${minor}`),
      probe('mknod-view', `mknod /opt/disk b ${major} ${minor}`),
      probe('mknod-dev', `mknod /dev/disk b ${major} ${minor}`),
      probe('null', 'sh -c "echo x > /dev/null"'),
      probe('urandom', 'head -c 16 /dev/urandom'),
      'ls /dev | tr "\\n" " "; echo'
    ].join('\n')
  })
  const lines = said(h, 'devices')
  assert.deepEqual(lines.slice(0, 6), ['read-root:refused', 'mknod-tmp:refused', 'mknod-view:refused', 'mknod-dev:refused', 'null:done', 'urandom:done'])
  assert.deepEqual(lines[6]!.trim().split(' ').sort(), ['fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero'])
})

test('a step cannot mount, make a user namespace, use the kernel keyring or open a raw socket; its capabilities are Docker\'s less MKNOD and NET_RAW', async (t) => {
  const h = await harness(t)
  await h.runner.exec({
    name: 'powers',
    run: [
      'mkdir -p /opt/m',
      probe('mount-tmpfs', 'mount -t tmpfs none /opt/m'),
      probe('userns', 'unshare -U true'),
      probe('userns-mount', 'unshare -Urm true'),
      probe('python-userns', "/usr/bin/python3 -c 'import os; os.unshare(os.CLONE_NEWUSER)'"),
      probe('keyring', "/usr/bin/python3 -c 'import ctypes, sys; sys.exit(ctypes.CDLL(None, use_errno=True).syscall(250, 0, -3, 0) < 0)'"),
      probe('packet-socket', "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))'"),
      "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status | tr '\\t' ' '",
      "grep -E '^NoNewPrivs' /proc/self/status | tr '\\t' ' '"
    ].join('\n')
  })
  const lines = said(h, 'powers')
  assert.deepEqual(lines.slice(0, 6), ['mount-tmpfs:refused', 'userns:refused', 'userns-mount:refused', 'python-userns:refused', 'keyring:refused', 'packet-socket:refused'])
  const caps = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31] // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT AUDIT_WRITE SETFCAP
  const mask = caps.reduce((m, c) => m | (1n << BigInt(c)), 0n).toString(16).padStart(16, '0')
  assert.deepEqual(lines.slice(6), [`CapInh: ${'0'.repeat(16)}`, `CapPrm: ${mask}`, `CapEff: ${mask}`, `CapBnd: ${mask}`, `CapAmb: ${'0'.repeat(16)}`, 'NoNewPrivs: 0'])
})

test('installing a package still works: apt-get install of a local .deb whose maintainer script adds a user, chown, su and setpriv to that user', async (t) => {
  const h = await harness(t)
  const dir = tempDir(t, 'strata-sandbox-deb-')
  const pkg = `${dir}/pkg`
  mkdirSync(`${pkg}/DEBIAN`, { recursive: true })
  mkdirSync(`${pkg}/usr/share/strata-probe`, { recursive: true })
  writeFileSync(`${pkg}/usr/share/strata-probe/hello`, 'hello\n')
  writeFileSync(`${pkg}/DEBIAN/control`, 'Package: strata-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: strata <strata@example.invalid>\nDescription: a sandbox probe\n')
  writeFileSync(`${pkg}/DEBIAN/postinst`, '#!/bin/sh\nset -e\nuseradd --system --no-create-home strata-probe\nchown strata-probe /usr/share/strata-probe/hello\n')
  chmodSync(`${pkg}/DEBIAN/postinst`, 0o755)
  execFileSync('dpkg-deb', ['--root-owner-group', '--build', pkg, `${dir}/probe.deb`], { stdio: 'ignore' })
  await h.runner.exec({
    name: 'install',
    run: [
      `apt-get install -y -q ${dir}/probe.deb >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }`,
      'stat -c %U /usr/share/strata-probe/hello',
      'su -s /bin/sh strata-probe -c "id -un"',
      'setpriv --reuid strata-probe --regid nogroup --clear-groups id -u | grep -qv "^0$" && echo setpriv:ok',
      'mkdir -p /opt/owned && chown 1234:5678 /opt/owned && stat -c %u:%g /opt/owned'
    ].join('\n')
  })
  assert.deepEqual(said(h, 'install'), ['strata-probe', 'strata-probe', 'setpriv:ok', '1234:5678'])
})

test('a 200 KiB run: script runs with $0 set to the step name and sh -e semantics', async (t) => {
  const h = await harness(t)
  const filler = `# ${'x'.repeat(1000)}\n`.repeat(205)
  await h.runner.exec({ name: 'big', run: `${filler}echo "zero=$0"\necho "$(wc -c < /tmp/.strata-script)"` })
  const lines = said(h, 'big')
  assert.equal(lines[0], 'zero=big')
  assert.ok(Number(lines[1]) > 200 * 1024)
  await assert.rejects(h.runner.exec({ name: 'stops', run: `${filler}false\necho not-reached` }), (err: StepFailedError) => err instanceof StepFailedError && err.exitCode === 1)
  assert.deepEqual(said(h, 'stops'), [])
})

test('/tmp holds at most tmp-size: past it a write fails with ENOSPC inside the step', async (t) => {
  const h = await harness(t)
  const proj = tempDir(t)
  const p = parsePipeline(`base: host
tmp-size: 1m
steps:
  - name: fill
    run: |
      dd if=/dev/zero of=/tmp/fill bs=64k count=8 2>/dev/null && echo half:ok
      if err=$(dd if=/dev/zero of=/tmp/more bs=64k count=16 2>&1); then echo full:ok; else echo "$err" | grep -o 'No space left on device'; fi
      if dd if=/dev/zero of=/dev/shm/more bs=64k count=17 2>/dev/null; then echo shm:ok; else echo shm:full; fi
`, { file: `${proj}/strata.yml` })
  await h.runner.run(p)
  assert.deepEqual(said(h, 'fill'), ['half:ok', 'No space left on device', 'shm:full'])
})

test('a mount that appears in the step\'s view while it runs is named in its output', async (t) => {
  const h = await harness(t)
  const side = sideChannel(t)
  const running = h.runner.exec({ name: 'mountee', run: `echo waiting >> ${side.dir}/ran; while [ ! -e ${side.dir}/go ]; do sleep 0.05; done` })
  const deadline = Date.now() + 20_000
  while (!side.lines().includes('waiting')) {
    assert.ok(Date.now() < deadline, 'the step started')
    await delay(20)
  }
  const [sh] = processesMatching('/bin/sh -e -c . /tmp/.strata-script mountee')
  assert.ok(sh !== undefined)
  execFileSync('nsenter', ['-t', String(sh), '-m', 'mount', '-t', 'tmpfs', 'strata-sandbox-test', '/mnt'])
  writeFileSync(`${side.dir}/go`, '')
  await running
  assert.deepEqual(said(h, 'mountee'), ['strata: /mnt (tmpfs) was mounted by the step: what it holds is not part of the layer'])
})

test('a step uses the host\'s network, but sees neither the host\'s processes nor its System V IPC, and its writes stay in its view', async (t) => {
  const h = await harness(t)
  const got: string[] = []
  const server = createServer((c) => c.setEncoding('utf8').on('data', (d: string) => got.push(d.trim())))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => server.close())
  const port = (server.address() as AddressInfo).port
  const shm = execFileSync('ipcmk', ['-M', '4096'], { encoding: 'utf8' }).match(/(\d+)\s*$/)![1]!
  t.after(() => execFileSync('ipcrm', ['-m', shm]))
  const marker = `/var/tmp/strata-sandbox-write-${process.pid}`
  await h.runner.exec({
    name: 'neighbours',
    run: [
      `bash -c 'echo hello > /dev/tcp/127.0.0.1/${port}' && echo net:done`,
      probe('host-pid', `kill -0 ${process.pid}`),
      probe('host-shm', `ipcs -m | grep -qw ${shm}`),
      `echo written > ${marker} && echo write:done`,
      'cat /etc/resolv.conf',
      probe('resolv-write', "sh -c 'echo nameserver 192.0.2.1 >> /etc/resolv.conf'")
    ].join('\n')
  })
  // The host's resolv.conf is bound read-only over the view's (a regular file on this host).
  const resolv = readFileSync('/etc/resolv.conf', 'utf8').split('\n').filter((l) => l !== '')
  assert.deepEqual(said(h, 'neighbours'), ['net:done', 'host-pid:refused', 'host-shm:refused', 'write:done', ...resolv, 'resolv-write:refused'])
  for (const deadline = Date.now() + 10_000; got.length === 0 && Date.now() < deadline;) await delay(10)
  assert.deepEqual(got, ['hello'])
  assert.equal(existsSync(marker), false)
})

test('a runner refuses shared dirs that would show the data dir or the whole host, and a tmp size below 4 KiB', async (t) => {
  const h = await harness(t)
  const parent = h.dataDir.slice(0, h.dataDir.lastIndexOf('/'))
  for (const shared of [['/'], [parent], [h.dataDir], [`${h.dataDir}/runner`], ['relative'], ['/a/../b']]) {
    await assert.rejects(h.reopen({ shared }), TypeError, JSON.stringify(shared))
  }
  await assert.rejects(h.reopen({ tmpSize: 1024 }), /tmpSize must be/)
})

test('a symlink a step leaves in its layer cannot lead the next step\'s setup to the host', async (t) => {
  const h = await harness(t)
  const shared = mkdtempSync('/var/tmp/strata-sandbox-sh-')
  const target = mkdtempSync('/var/tmp/strata-sandbox-x-')
  t.after(() => {
    rmSync(shared, { recursive: true, force: true })
    rmSync(target, { recursive: true, force: true })
  })
  mkdirSync(`${shared}/inner`)
  const planted = await h.runner.exec({ name: 'plant', run: `rm -rf ${shared} && ln -s ${target} ${shared}` })
  const next = await h.reopen({ shared: [`${shared}/inner`] })
  await assert.rejects(next.exec({ name: 'victim', run: 'true', parent: planted.key }), { code: 'ERR_SANDBOX', detail: /is not a directory in the step's filesystem/ })
  assert.equal(existsSync(`${target}/inner`), false, 'nothing was made on the host')
})

function devNumbers (dev: string): { major: number, minor: number } {
  const [major, minor] = execFileSync('stat', ['-L', '-c', '%Hr %Lr', dev], { encoding: 'utf8' }).trim().split(' ').map(Number)
  return { major: major!, minor: minor! }
}
