import type { CID } from 'multiformats/cid'

// Keys under which the runner keeps its own things in the store's record space
// (the records themselves live under @strata/records' recordKey).
/** The key descriptor of a step's cache key: what `why` diffs. */
export const descriptorKey = (key: CID | string): string => `runner/desc/${key.toString()}`
/** The last key a step of a pipeline had, for `why`. */
export const lastKey = (chain: string): string => `runner/last/${chain}`
/** The stack (layer ids and env lines) below a step's key, for exec()'s `parent`. */
export const stackKey = (key: CID | string): string => `runner/stack/${key.toString()}`
