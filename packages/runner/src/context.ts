import type { Logger } from 'pino'
import type { Identity, RecordPolicy, WriterKey } from '@strata/records'
import type { Store } from '@strata/store'
import type { BaseIdentity } from './base.ts'
import type { Chain } from './chain.ts'
import type { ProcessClaim } from './claim.ts'
import type { Emit } from './events.ts'
import type { Hold } from './hold.ts'
import type { InputLimits } from './inputs.ts'
import type { OutputPlaces } from './outputs.ts'
import type { StepSpec } from './pipeline.ts'
import type { OutputOptions } from './sandbox.ts'
import type { JobSlot } from './schedule.ts'

/** What the runner needs from the fleet: find a key's record and bring its layer into the store. */
export interface RemoteCache {
  /**
   * Looks `key` up among peers and fetches its layer into the store; afterwards
   * the store holds the record and the layer. Throws when it cannot.
   */
  resolve (key: string, opts: { signal?: AbortSignal, scopes?: readonly string[] }): Promise<{ providers: number, bytes: number, durationMs: number }>
  /** Whether the fleet accepts records signed by `peer` in `scope` (on top of the runner's own trusted peers). */
  trusts (peer: string, scope: string): boolean
  /** The fleet's trust epoch, when it has one. */
  readonly epoch?: number
  /** Claims `key` across the fleet before this node builds it, so that one node builds and the others take its record. */
  claim? (key: string, opts: { scope: string, signal?: AbortSignal }): Promise<FleetClaim>
}

/** `granted`: this node builds the key and releases the claim after; `held`: a trusted peer builds it. */
export type FleetClaim =
  | { status: 'granted', release (outcome: 'built' | 'failed'): Promise<void> }
  | { status: 'held', holder: string,
      settled (opts: { signal?: AbortSignal, timeoutMs: number }): Promise<'record' | 'released' | 'expired' | 'timeout'> }

/** The runner's settings, fixed when it is created: what every phase of every step reads. */
export interface RunnerContext {
  readonly store: Store
  /** Real path: the identity, scratch dirs, and the dir hidden from a step on the host base. */
  readonly dataDir: string
  readonly log: Logger
  readonly identity: Identity
  /** The writer key records are signed with; the identity signs them without one. */
  readonly writerKey: WriterKey | undefined
  /** Whose records count as hits, the scopes read (most preferred first), and the epoch records are written in. */
  readonly policy: RecordPolicy & { scopes: readonly string[], epoch: number }
  /** The scope records are written in. */
  readonly scope: string
  readonly remote: RemoteCache | undefined
  /** Where env names declared without a value are read. */
  readonly env: Readonly<Record<string, string | undefined>>
  readonly output: OutputOptions
  readonly killGraceMs: number
  readonly limits: InputLimits
  readonly fleetSalt: string | null
  readonly sandbox: { tmpSize?: number, shared?: readonly string[], hide?: readonly string[] }
  /** The keys steps of this runner are building now (claim.ts), so that a second step with the same key waits for the first. */
  readonly claims: Map<string, ProcessClaim>
}

/** One step as its phases see it: what it is, what it starts from, what the run holds and where it reports. */
export interface StepContext {
  readonly step: StepSpec
  /** Updated in place: a step that hits or runs puts its layer and env lines on top. */
  readonly chain: Chain
  readonly base: BaseIdentity
  /** The pipeline's salt. */
  readonly salt: string | null
  /** Identifies this step of this pipeline across runs, for why(). */
  readonly lastId: string
  readonly hold: Hold
  readonly signal: AbortSignal | undefined
  /** Run the step without looking it up. */
  readonly noCache: boolean
  readonly emit: Emit
  /** When the step started (performance.now()). */
  readonly t0: number
  /** Where its `outputs` are read and written (run() only). */
  readonly places?: OutputPlaces | undefined
  /** Where its command's output goes (prefixed with its name while other steps run at once). */
  readonly output: OutputOptions
  /** run() only: the step's job slot, given up while it waits for another build of its key. */
  readonly slot?: JobSlot | undefined
  /** How long the step waits for another build of its key before running it anyway. Default 30 minutes, never past its timeout. */
  readonly claimWaitMs?: number | undefined
}
