/**
 * Test-only crash points. With `STRATA_FAILPOINT=<name>` in its environment, a
 * process SIGKILLs itself when it reaches the point of that name, so that a test
 * can check what a restart makes of the state left at exactly that moment.
 * Unset (always, outside tests), a failpoint is one comparison with `undefined`.
 */
const armed = process.env.STRATA_FAILPOINT

/** Every named point, for tests and doc/STORE.md. */
export const FAILPOINTS = [
  'commit:manifest-partial', 'commit:manifest-written', 'commit:renamed', 'commit:located',
  'restore:materialized', 'restore:manifest-written', 'restore:renamed', 'restore:located',
  'gc:marked', 'gc:moved', 'gc:unindexed'
] as const

export type FailpointName = typeof FAILPOINTS[number]

export function failpoint (name: FailpointName): void {
  if (armed === name) process.kill(process.pid, 'SIGKILL')
}
