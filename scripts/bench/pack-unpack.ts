// strata pack / unpack against GNU tar on the big tree (issue 2, benchmark 2).
//
//   node scripts/bench/pack-unpack.ts [--reps 3] [--json] [--tree DIR] [--keep-source] [--no-verify] [--fs ext4|here]
//
// Each measured command works on a fresh copy of the tree made just before it
// (`strata pack` moves its source into the store), followed by an untimed `sync`, so
// that every command starts with the same page cache state and no dirty pages of
// someone else's. Timed: the command plus the `sync` after it. Peak RSS is the
// command's, from GNU time. The tar pair and the strata pair swap order every rep so
// that drift in the machine's load (it is shared) falls on both alike.
// --keep-source adds a row for `strata pack --keep-source` (copies instead of moving).
// Everything runs on a journaled ext4 made for the run (scratch-fs.ts says why);
// --fs here runs on the cache dir's own filesystem instead.

import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bigTree, cacheRoot, treeStats } from './fixture.ts'
import type { RunResult, Summary } from './measure.ts'
import { scratchFs } from './scratch-fs.ts'
import { formatTable, GNU_TIME, parseFlags, runMeasured, runQuiet, strataBin, summarize } from './measure.ts'

const TARGETS = { pack: 1.0, unpack: 1.2, rssMB: 300 }

type Op = 'tar pack' | 'strata pack' | 'strata pack --keep-source' | 'tar unpack' | 'strata unpack'

interface Sample { seconds: number, commandSeconds: number, syncSeconds: number, peakRss: number | null }

async function main (): Promise<void> {
  const flags = parseFlags(process.argv.slice(2), { reps: '3', json: false, tree: '', 'keep-source': false, verify: true, fs: 'ext4' })
  const reps = Number.parseInt(flags.reps, 10)
  if (!(reps >= 1)) throw new TypeError(`--reps must be a positive integer, got ${flags.reps}`)
  if (flags.fs !== 'ext4' && flags.fs !== 'here') throw new TypeError(`--fs must be ext4 or here, got ${flags.fs}`)
  const log = (line: string): void => { if (!flags.json) console.log(line) }
  const progress = (line: string): void => { process.stderr.write(line + '\n') }
  if (!existsSync(GNU_TIME)) progress(`${GNU_TIME} not found (apt-get install time): peak RSS will not be reported`)

  const tree = flags.tree !== '' ? flags.tree : await bigTree()
  const stats = await treeStats(tree)
  // Four copies of the tree at most (source, archive, store, destination), twice over.
  const scratch = scratchFs(cacheRoot(), `pack-unpack-${process.pid}`, Math.max(4, Math.ceil(8 * stats.bytes / 2 ** 30)), flags.fs)
  const work = scratch.dir
  const strata = [strataBin()]
  const paths = {
    src: join(work, 'src'),
    archive: join(work, 'tree.tar'),
    dest: join(work, 'dest'),
    store: join(work, 'store'),
    keepStore: join(work, 'store-keep'),
    time: join(work, 'time.txt')
  }

  try {
    const strataProblem = await preflight(strata, join(work, 'preflight'))
    if (strataProblem !== null) progress(`strata pack/unpack not usable yet, measuring tar only: ${strataProblem}`)
    const ops: Op[] = ['tar pack', 'tar unpack']
    if (strataProblem === null) ops.push('strata pack', ...(flags['keep-source'] ? ['strata pack --keep-source' as const] : []), 'strata unpack')
    const samples = new Map<Op, Sample[]>(ops.map((op) => [op, []]))
    const cids = new Set<string>()

    const fresh = async (dir: string): Promise<void> => {
      await rm(dir, { recursive: true, force: true })
      await runQuiet('sync', [])
    }
    const copyTree = async (): Promise<void> => {
      await rm(paths.src, { recursive: true, force: true })
      await runQuiet('cp', ['-a', '--reflink=auto', tree, paths.src])
      await runQuiet('sync', [])
    }
    const measure = async (op: Op, cmd: string[]): Promise<RunResult> => {
      const r = await runMeasured(cmd[0]!, cmd.slice(1), paths.time)
      const s = await runMeasured('sync', [], null)
      const sample = { seconds: r.seconds + s.seconds, commandSeconds: r.seconds, syncSeconds: s.seconds, peakRss: r.peakRss }
      samples.get(op)!.push(sample)
      progress(`  ${op}: ${sample.seconds.toFixed(2)} s (sync ${s.seconds.toFixed(2)} s)${r.peakRss === null ? '' : `, peak RSS ${mb(r.peakRss)} MB`}`)
      return r
    }

    const tarPair = async (): Promise<void> => {
      await copyTree()
      await fresh(paths.archive)
      await measure('tar pack', ['tar', '-cf', paths.archive, '-C', paths.src, '.'])
      await fresh(paths.dest)
      await mkdir(paths.dest)
      await measure('tar unpack', ['tar', '-xf', paths.archive, '-C', paths.dest])
    }
    const strataPair = async (rep: number): Promise<void> => {
      await copyTree()
      await fresh(paths.store)
      const packed = await measure('strata pack', [...strata, 'pack', paths.src, '--data-dir', paths.store])
      const cid = packed.stdout.trim().split('\n').at(-1) ?? ''
      cids.add(cid)
      if (flags['keep-source']) {
        await copyTree()
        await fresh(paths.keepStore)
        const kept = await measure('strata pack --keep-source', [...strata, 'pack', paths.src, '--data-dir', paths.keepStore, '--keep-source'])
        cids.add(kept.stdout.trim().split('\n').at(-1) ?? '')
        await rm(paths.keepStore, { recursive: true, force: true })
      }
      await fresh(paths.dest)
      await measure('strata unpack', [...strata, 'unpack', cid, paths.dest, '--data-dir', paths.store])
      if (rep === 1 && flags.verify) {
        progress('  verifying the unpacked tree against the source (diff -r, untimed)')
        await runQuiet('diff', ['-r', '--no-dereference', '-q', tree, paths.dest])
      }
    }

    for (let rep = 1; rep <= reps; rep++) {
      progress(`rep ${rep}/${reps} (load average ${os.loadavg()[0]!.toFixed(2)})`)
      if (strataProblem !== null) await tarPair()
      else if (rep % 2 === 1) {
        await tarPair()
        await strataPair(rep)
      } else {
        await strataPair(rep)
        await tarPair()
      }
    }
    await rm(paths.src, { recursive: true, force: true })
    await rm(paths.dest, { recursive: true, force: true })

    const summaries = new Map<Op, Summary & { peakRssMB: number | null }>()
    for (const [op, list] of samples) {
      const rss = list.map((s) => s.peakRss).filter((x) => x !== null)
      summaries.set(op, { ...summarize(list.map((s) => s.seconds)), peakRssMB: rss.length === 0 ? null : mb(Math.max(...rss)) })
    }
    const ratio = (a: Op, b: Op): number | null => {
      const x = summaries.get(a)
      const y = summaries.get(b)
      return x === undefined || y === undefined ? null : x.median / y.median
    }
    const ratios = {
      pack: ratio('strata pack', 'tar pack'),
      packKeepSource: ratio('strata pack --keep-source', 'tar pack'),
      unpack: ratio('strata unpack', 'tar unpack')
    }
    const environment = {
      date: new Date().toISOString(),
      commit: gitHead(),
      node: process.version,
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model ?? 'unknown',
      memoryGB: Math.round(os.totalmem() / 1e9),
      kernel: os.release(),
      loadAverageAtEnd: os.loadavg()[0]!,
      filesystem: scratch.kind,
      tar: runSync('tar', ['--version']).split('\n')[0] ?? ''
    }

    if (flags.json) {
      console.log(JSON.stringify({
        tree: { path: tree, ...stats },
        reps,
        environment,
        strataSkipped: strataProblem,
        packCids: [...cids],
        results: Object.fromEntries([...summaries].map(([op, s]) => [op, { ...s, samples: samples.get(op) }])),
        ratios,
        targets: TARGETS
      }, null, 2))
      return
    }

    log('')
    log(`tree ${tree}: ${stats.entries} entries (${stats.files} files), ${mb(stats.bytes)} MB of file data`)
    log(`${reps} reps; ${environment.cpus} x ${environment.cpuModel}, ${environment.filesystem}, node ${environment.node}, ${environment.tar}, commit ${environment.commit}`)
    log(`load average at the end ${environment.loadAverageAtEnd.toFixed(2)} (the machine may be shared; see min/max)`)
    log('each time includes the sync after the command; ratios are of medians')
    log('')
    const rows = [['', 'median s', 'min s', 'max s', 'peak RSS MB', 'vs tar']]
    const against: Record<Op, Op | null> = {
      'tar pack': null,
      'strata pack': 'tar pack',
      'strata pack --keep-source': 'tar pack',
      'tar unpack': null,
      'strata unpack': 'tar unpack'
    }
    const order: Op[] = ['tar pack', 'strata pack', 'strata pack --keep-source', 'tar unpack', 'strata unpack']
    for (const op of order) {
      const s = summaries.get(op)
      if (s === undefined) continue
      const base = against[op]
      const r = base === null ? null : ratio(op, base)
      rows.push([op, s.median.toFixed(2), s.min.toFixed(2), s.max.toFixed(2), s.peakRssMB === null ? '-' : String(s.peakRssMB), r === null ? '' : `${r.toFixed(2)}x`])
    }
    log(formatTable(rows))
    log('')
    if (strataProblem !== null) log(`strata rows skipped: ${strataProblem}`)
    else {
      log(`targets: pack <= ${TARGETS.pack.toFixed(1)}x tar, unpack <= ${TARGETS.unpack.toFixed(1)}x tar, peak RSS < ${TARGETS.rssMB} MB`)
      if (cids.size !== 1) log(`WARNING: packing the same tree gave ${cids.size} different root CIDs: ${[...cids].join(' ')}`)
      else log(`root CID (same in every rep): ${[...cids][0]}`)
    }
  } finally {
    scratch.remove()
  }
}

/** Packs and unpacks a tiny tree; returns why strata cannot be measured, or null. */
async function preflight (strata: string[], dir: string): Promise<string | null> {
  try {
    await mkdir(join(dir, 'src', 'a'), { recursive: true })
    await writeFile(join(dir, 'src', 'a', 'file'), 'hello\n')
    const out = await runQuiet(strata[0]!, [...strata.slice(1), 'pack', join(dir, 'src'), '--data-dir', join(dir, 'store')])
    const cid = out.trim().split('\n').at(-1) ?? ''
    await runQuiet(strata[0]!, [...strata.slice(1), 'unpack', cid, join(dir, 'dest'), '--data-dir', join(dir, 'store')])
    const back = await readFile(join(dir, 'dest', 'a', 'file'), 'utf8')
    if (back !== 'hello\n') return `unpack gave back ${JSON.stringify(back)} instead of "hello\\n"`
    return null
  } catch (err) {
    return (err as Error).message
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

function mb (bytes: number): number {
  return Math.round(bytes / 1e6)
}

function runSync (cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return 'unknown'
  }
}

function gitHead (): string {
  const head = runSync('git', ['-C', fileURLToPath(new URL('../..', import.meta.url)), 'rev-parse', '--short', 'HEAD'])
  const dirty = runSync('git', ['-C', fileURLToPath(new URL('../..', import.meta.url)), 'status', '--porcelain', '--untracked-files=no', 'packages'])
  return dirty === '' ? head : `${head} (+ uncommitted changes in packages/)`
}

try {
  await main()
} catch (err) {
  console.error(`pack-unpack: ${(err as Error).message}`)
  process.exitCode = 1
}
