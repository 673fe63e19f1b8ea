export { createRunner } from './runner.ts'
export type {
  Runner, RunnerInit, RemoteCache, RunOptions, RunResult, RunnerEvent, MissReason, StepResult, ExecStep, WhyReport, WhyStep
} from './runner.ts'
export { loadPipeline, parsePipeline, parseDuration, parseSize, shellQuote, MAX_TMP_SIZE, PIPELINE_LIMITS } from './pipeline.ts'
export type { Pipeline, StepSpec, EnvDecl, BaseSpec, ParseOptions, PipelineLimits } from './pipeline.ts'
export { KEY_FORMAT, diffDescriptors, describeChange, decodeDescriptor, encodeDescriptor } from './key.ts'
export type { KeyDescriptor, KeyChange } from './key.ts'
export type { BaseIdentity } from './base.ts'
export type { InputEntry, InputLimits } from './inputs.ts'
export type { OutputOptions } from './sandbox.ts'
export { STRATA_ENV_PATH, STRATA_SCRIPT_PATH, DEFAULT_TMP_SIZE, MAX_LOWER_LAYERS } from './sandbox.ts'
export * from './errors.ts'
export { MAX_JOBS } from './schedule.ts'
