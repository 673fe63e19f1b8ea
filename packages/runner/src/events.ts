/** What a run reports as it goes: one event per phase of a step, and the result of each step. */

export type MissReason = 'no-record' | 'invalid-record' | 'expired' | 'layer-missing' | 'layer-corrupt' | 'no-cache' | 'uncached-step' | 'cache-off'

export type RunnerEvent =
  | { type: 'start', step: string, index: number, total: number }
  /** `warnings`: filter patterns and input globs that matched nothing (a typo would otherwise pass silently). */
  | { type: 'key', step: string, key: string, durationMs: number, warnings: string[] }
  | { type: 'hit', step: string, key: string, layer: string, size: number, source: 'local', durationMs: number }
  | { type: 'hit', step: string, key: string, layer: string, size: number, source: 'peer', durationMs: number, providers: number, bytes: number }
  | { type: 'miss', step: string, key: string, reason: MissReason }
  /**
   * The step missed while another builds its key: a step of this run (`holder` its name), another
   * process on this machine (its pid) or a peer (its peer id). A hit or a miss follows.
   */
  | { type: 'wait', step: string, key: string, holder: string, where: 'process' | 'local' | 'peer' }
  | { type: 'ran', step: string, key: string, exitCode: 0, durationMs: number }
  | { type: 'capture-progress', step: string, unit: 'entries' | 'bytes', done: number, total: number }
  | { type: 'captured', step: string, key: string, layer: string, size: number, entries: number, durationMs: number }
  /** The step ran but its result could not be stored (a full disk): later steps of this run still see its changes. */
  | { type: 'capture-failed', step: string, key: string, error: Error }
  /** Once per run: the data dir's filesystem is full; later steps look nothing up, commit nothing and run on scratch space elsewhere. */
  | { type: 'cache-off', step: string, error: Error }
  /** After a step that declares `outputs` ran or hit: they are in the host workspace. */
  | { type: 'outputs', step: string, paths: string[], entries: number, bytes: number, durationMs: number }
  /** After the last step, with `export`: the run's changes are in `dir`. */
  | { type: 'exported', step: string, dir: string, entries: number, bytes: number, durationMs: number }
  /** A step that never started: a step it uses failed, or another step's failure cancelled the run. */
  | { type: 'skipped', step: string, reason: 'parent-failed' | 'cancelled' }
  | { type: 'failed', step: string, key?: string, reason: 'exit' | 'timeout' | 'cancel' | 'error', exitCode: number | null, signal: string | null, durationMs: number, error: Error }

export interface StepResult {
  name: string
  /** The step's cache key (CID string): pass it as `parent` to exec() to chain. */
  key: string
  /** Root CID of the step's layer; empty when the step ran but its capture failed. */
  layer: string
  status: 'hit' | 'ran'
  /** Bytes of file content in the layer. */
  size: number
  /** NAME=value lines this step appended to $STRATA_ENV. */
  env: string[]
  durationMs: number
}

/** Where a step's phases report. */
export type Emit = (event: RunnerEvent) => void
