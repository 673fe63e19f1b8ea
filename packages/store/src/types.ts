import type { CID } from 'multiformats/cid'

/** A committed layer as the store knows it. */
export interface LayerInfo {
  /** Root CID of the layer manifest: the layer's identity. */
  root: CID
  /** Directory holding the layer in OverlayFS upper-dir form; mountable as a lower dir. */
  path: string
  /** Bytes of regular-file content in the layer. */
  size: number
  /** Number of manifest entries. */
  entries: number
  /** Number of distinct content blocks (inlined file data is not counted). */
  blocks: number
  /** Milliseconds since the epoch when the layer was committed. */
  created: number
}

/** Anything that yields block bytes already verified against their CID. */
export interface BlockSource {
  getBlock(cid: CID, opts?: { signal?: AbortSignal }): Promise<Uint8Array>
  /**
   * True when getBlock() itself checks every block against its CID before
   * returning it (the block exchange does, before it writes or bans): a restore
   * then does not hash the bytes a second time.
   */
  readonly verified?: boolean
}

export interface CommitOptions {
  /** Copy the directory into the store instead of moving it (the source is left as it was). */
  keepSource?: boolean
  signal?: AbortSignal
  onProgress?: (event: ProgressEvent) => void
}

export interface RestoreOptions {
  signal?: AbortSignal
  /** Apply the peer policy: strip setuid/setgid and non-allow-listed xattrs, refuse device nodes. */
  untrusted?: boolean
  onProgress?: (event: ProgressEvent) => void
}

/**
 * A layer looked up for a hit: here and as committed (its files' stat fingerprint
 * unchanged), marked corrupt (now or before), or not in the store.
 */
export type LayerCheck =
  | { status: 'ok', layer: LayerInfo }
  | { status: 'corrupt', root: string, path?: string, reason?: string }
  | { status: 'missing', root: string }

export interface VerifyOptions {
  signal?: AbortSignal
  /** Called after each file's content was read, with its bytes: a paced reader (the daemon's scrub) waits here. */
  onRead?: (bytes: number) => Promise<void> | void
}

/** A layer re-hashed against its manifest. */
export interface LayerVerification {
  root: string
  status: 'ok' | 'corrupt' | 'missing'
  /** Files and bytes of content read. */
  files: number
  bytes: number
  /** The first path found wrong (corrupt only; absent when the layer was marked before and the path was not recorded). */
  path?: string
  /** What was wrong: missing, type, size, content, mode, owner, target, extra, manifest, stat, block. */
  reason?: string
  /** The layer had been marked corrupt before this verification; it was not read again. */
  marked?: boolean
}

export type ProgressEvent =
  | { type: 'entries', done: number, total: number }
  | { type: 'bytes', done: number, total: number }

export interface Store {
  readonly dataDir: string
  /** Commits `dir` (an upper dir) as a layer; moves it unless `keepSource`. Idempotent per root CID. */
  commit(dir: string, opts?: CommitOptions): Promise<LayerInfo>
  has(root: CID): Promise<boolean>
  getLayer(root: CID): Promise<LayerInfo | undefined>
  /**
   * The layer for a hit: getLayer plus a stat walk of its dir against the
   * fingerprint taken at commit. A mismatch marks the layer corrupt; a corrupt
   * layer is never returned as ok.
   */
  checkLayer(root: CID, opts?: { signal?: AbortSignal }): Promise<LayerCheck>
  listLayers(): Promise<LayerInfo[]>
  removeLayer(root: CID): Promise<void>
  /** Bytes of a content or manifest block, verified; throws BlockCorruptError and marks the layer corrupt on mismatch. */
  getBlock(cid: CID, opts?: { signal?: AbortSignal }): Promise<Uint8Array>
  hasBlock(cid: CID): Promise<boolean>
  /** Restores a layer from its root CID, taking local blocks from local layers and the rest from `source`. */
  restore(root: CID, source: BlockSource, opts?: RestoreOptions): Promise<LayerInfo>
  /** Opaque records (the runner's signed key -> layer records), keyed by a string. */
  putRecord(key: string, value: Uint8Array): Promise<void>
  getRecord(key: string): Promise<Uint8Array | undefined>
  close(): Promise<void>
}

export interface StoreInit {
  dataDir: string
  /** When another process holds the store: wait for it (default) or fail with StoreLockedError. */
  wait?: boolean
  signal?: AbortSignal
}

export interface GcOptions {
  /** Remove least recently used layers until the layers' content adds up to at most this many bytes. */
  maxSize: number
  /** Above this many bytes, layers used recently and the last copies in the fleet go too. Default: none (they are kept). */
  hardLimit?: number
  /** Report what would go, remove nothing. Default false. */
  dryRun?: boolean
  /** Copies the fleet holds of a layer, this node's included; undefined when unknown. Default: unknown for all. */
  copies?: (root: CID, opts: { signal?: AbortSignal }) => Promise<number | undefined>
  /** A layer used (committed, restored, leased, served) less than this long ago is kept unless over the hard limit. Default 60 000 ms. */
  graceMs?: number
  signal?: AbortSignal
}

export interface GcKept {
  root: string
  size: number
  /** Why a layer that would have gone by age stayed. */
  reason: 'leased' | 'recent' | 'last-copy'
}

export interface GcReport {
  dryRun: boolean
  maxSize: number
  hardLimit: number | null
  /** Bytes of layer content before and after. */
  before: number
  after: number
  /** Removed (or, in a dry run, to be removed), least recently used first. */
  removed: Array<{ root: string, size: number, lastUsed: number, lastCopy: boolean, corrupt?: true }>
  kept: GcKept[]
}
