import { formatMs } from './errors.ts'

const UNIT: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }
/** A ttl past a year is a typo, not a plan. */
export const MAX_TTL_MS = 365 * UNIT.d!

/** "12h", "7d", "1h30m", "90s" or a number of seconds; undefined when malformed or outside 1s..365d. */
export function parseTtl (v: string | number): number | undefined {
  let ms: number
  if (typeof v === 'number') {
    ms = v * 1000
  } else {
    const s = v.trim()
    if (!/^(\d+(\.\d+)?[smhd])+$/.test(s)) return undefined
    ms = 0
    for (const m of s.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)) ms += Number(m[1]) * UNIT[m[2]!]!
  }
  return Number.isFinite(ms) && ms >= 1000 && ms <= MAX_TTL_MS ? Math.round(ms) : undefined
}

/** Whether a record made at `created` (ms since the epoch, by its producer's clock) is past `ttlMs` at `now`. */
export function isExpired (created: number, ttlMs: number | undefined, now = Date.now()): boolean {
  return ttlMs !== undefined && now - created > ttlMs
}

/** "12h", "1d2h", "90s": a ttl as strata.yml would write it. */
export function formatTtl (ms: number): string {
  let rest = Math.round(ms / 1000)
  let out = ''
  for (const [u, secs] of [['d', 86_400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    const n = Math.floor(rest / secs)
    if (n > 0) out += `${n}${u}`
    rest -= n * secs
  }
  return out === '' ? '0s' : out
}

/** The `why` line for an expired record. */
export function describeExpiry (created: number, ttlMs: number, now = Date.now()): string {
  return `expired (created ${formatAge(now - created)} ago, ttl ${formatTtl(ttlMs)})`
}

function formatAge (ms: number): string {
  return ms < 60_000 ? formatMs(Math.max(0, ms)) : formatTtl(Math.floor(ms / 60_000) * 60_000)
}
