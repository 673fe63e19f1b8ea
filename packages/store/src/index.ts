export { openStore, STORE_FORMAT } from './store.ts'
export type { OpenStoreInit, LocalStore } from './store.ts'
export type { Store, StoreInit, LayerInfo, BlockSource, CommitOptions, RestoreOptions, ProgressEvent } from './types.ts'
export * from './errors.ts'
