import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, lstatSync, readdirSync, readlinkSync } from 'node:fs'
import type { Stats } from 'node:fs'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { machine } from 'node:os'
import { BaseError } from './errors.ts'
import type { BaseSpec } from './pipeline.ts'

/** What stands for the base in the first step's key descriptor. */
export type BaseIdentity =
  | { kind: 'host', osRelease: Uint8Array, arch: string, id: string | null }
  | { kind: 'dir', digest: Uint8Array, id: string | null }

/**
 * The base's identity. `host`: sha2-256 of /etc/os-release, the machine architecture
 * (`uname -m`) and the optional base-id; deliberately coarse (two VMs of one image
 * with different packages installed look alike: set `base-id` to the image id).
 * A rootfs directory: a digest of its whole tree (see treeDigest), cached in
 * `cacheDir` while a stat walk of the tree finds nothing changed.
 */
export async function baseIdentity (base: BaseSpec, baseId: string | undefined, cacheDir: string, opts: { signal?: AbortSignal } = {}): Promise<BaseIdentity> {
  const id = baseId ?? null
  if (base.kind === 'host') {
    let text: Buffer
    try {
      text = await readFile('/etc/os-release', { signal: opts.signal })
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      text = Buffer.alloc(0) // no os-release: the base-id (if any) and arch still count
    }
    return { kind: 'host', osRelease: new Uint8Array(createHash('sha256').update(text).digest()), arch: machine(), id }
  }
  return { kind: 'dir', digest: await cachedTreeDigest(base.path, cacheDir, opts), id }
}

interface WalkEntry {
  path: string
  st: Stats
}

function walkTree (root: string, signal?: AbortSignal): WalkEntry[] {
  let rootSt: Stats
  try {
    rootSt = lstatSync(root)
  } catch (err) {
    throw new BaseError(`base ${root} cannot be read`, { cause: err })
  }
  if (!rootSt.isDirectory()) throw new BaseError(`base ${root} is not a directory`)
  const out: WalkEntry[] = [{ path: '', st: rootSt }]
  const visit = (rel: string): void => {
    signal?.throwIfAborted()
    const names = readdirSync(`${root}${rel}`).sort()
    for (const n of names) {
      const p = `${rel}/${n}`
      const st = lstatSync(`${root}${p}`)
      out.push({ path: p, st })
      // Stay on the base's filesystem, as OverlayFS does.
      if (st.isDirectory() && st.dev === rootSt.dev) visit(p)
    }
  }
  visit('')
  return out
}

/**
 * Content digest of a tree: sha2-256 over, per entry in path order, its path, type,
 * permission bits, owner, size, device number, link text and content sha2-256.
 * Times and inode numbers are left out so that the same tree unpacked on two
 * machines has the same digest.
 */
async function treeDigest (root: string, entries: WalkEntry[], signal?: AbortSignal): Promise<Uint8Array> {
  const h = createHash('sha256')
  h.update('strata/base-tree/v1\n')
  for (const { path, st } of entries) {
    signal?.throwIfAborted()
    const type = st.isFile() ? 'f' : st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : st.isFIFO() ? 'p' : 's'
    let extra = ''
    if (type === 'l') extra = readlinkSync(`${root}${path}`)
    else if (type === 'c' || type === 'b') extra = String(st.rdev)
    else if (type === 'f') {
      const fh = createHash('sha256')
      if (st.size > 0) for await (const chunk of createReadStream(`${root}${path}`, { signal })) fh.update(chunk as Buffer)
      extra = fh.digest('hex')
    }
    h.update(JSON.stringify([path, type, st.mode & 0o7777, st.uid, st.gid, type === 'f' ? st.size : 0, extra]))
    h.update('\n')
  }
  return new Uint8Array(h.digest())
}

/** Fingerprint of a stat walk: any change to names, sizes, times or inodes changes it. */
function statFingerprint (entries: WalkEntry[]): string {
  const h = createHash('sha256')
  for (const { path, st } of entries) h.update(`${path}\0${st.ino}\0${st.mode}\0${st.uid}\0${st.gid}\0${st.size}\0${st.mtimeMs}\0${st.ctimeMs}\n`)
  return h.digest('hex')
}

async function cachedTreeDigest (root: string, cacheDir: string, opts: { signal?: AbortSignal }): Promise<Uint8Array> {
  const entries = walkTree(root, opts.signal)
  const fingerprint = statFingerprint(entries)
  const cacheFile = `${cacheDir}/base-${createHash('sha256').update(root).digest('hex').slice(0, 32)}.json`
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as { root: string, fingerprint: string, digest: string }
    if (cached.root === root && cached.fingerprint === fingerprint) return new Uint8Array(Buffer.from(cached.digest, 'hex'))
  } catch {
    // no cache or a damaged one: recompute
  }
  const digest = await treeDigest(root, entries, opts.signal)
  await mkdir(cacheDir, { recursive: true })
  // Two runs of this machine, or two steps of one run, may write it at once: each its own file, renamed over.
  const tmp = `${cacheFile}.${randomBytes(4).toString('hex')}.tmp`
  try {
    await writeFile(tmp, JSON.stringify({ root, fingerprint, digest: Buffer.from(digest).toString('hex') }))
    await rename(tmp, cacheFile)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
  return digest
}

/** Where the base's files are: the host's root, or the rootfs directory. */
export function baseRoot (base: BaseSpec): string {
  return base.kind === 'host' ? '/' : base.path
}
