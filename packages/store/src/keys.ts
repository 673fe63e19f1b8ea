import type { ClassicLevel } from 'classic-level'

/** The index: LevelDB with text keys and byte values. */
export type Index = ClassicLevel<string, Uint8Array>

/**
 * Every key of the index, and every range over its keys, is built here (the
 * layout is in README.md). A family's keys are `<name>:<id>`; its range ends at
 * `<name>;`, the next byte after ':'.
 */
export interface Range {
  gte: string
  lt: string
}

export interface Family {
  key: (id: string) => string
  range: Range
  /** The id of one of the family's keys. */
  id: (key: string) => string
}

function family (name: string): Family {
  const prefix = `${name}:`
  return { key: (id) => prefix + id, range: { gte: prefix, lt: `${name};` }, id: (key) => key.slice(prefix.length) }
}

/** The store format (open.ts); another value is refused. */
export const K_VERSION = 'meta:version'
/** Present while a process has the store open: found at open, the last one died, and orphans are swept. */
export const K_OPEN = 'meta:open'

/** A layer's metadata (meta.ts), by root. */
export const LAYER = family('layer')
/** Written with a layer's manifest root before its dir is renamed into place; lets recovery finish the index. */
export const PENDING = family('pending')
/** Written (with the layer key deleted) before a layer's dir and index entries go; open finishes the removal. */
export const REMOVING = family('removing')
/** Last use of a layer, ms since the epoch as decimal text; absent means its `created`. */
export const USED = family('used')
/** The stat fingerprint of a committed layer dir, checked on every hit (fingerprint.ts). */
export const FPRINT = family('fprint')
/** Manifest block bytes, by CID. */
export const MBLOCK = family('mblock')
/** Opaque records of the runner and the daemon. */
export const RECORD = family('record')

/**
 * Where a content block lies in a layer, keyed by block then layer: a block held
 * by several layers has several locations, and removing a layer removes only its own.
 */
export const BLOCK = {
  key: (cid: string, layer: string): string => `block:${cid}:${layer}`,
  range: { gte: 'block:', lt: 'block;' } satisfies Range,
  /** The locations of one block, in every layer. */
  of: (cid: string): Range => ({ gte: `block:${cid}:`, lt: `block:${cid};` }),
  /** The layer a location key belongs to (CIDs hold no ':'). */
  layer: (key: string): string => key.slice(key.lastIndexOf(':') + 1)
}
