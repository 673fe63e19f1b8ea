const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }
const SIZE = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i

/**
 * Parses a size as a user writes it: `500M`, `20G`, `1.5T`, `4096` (bytes).
 * Units are binary (K = 1024) with optional `B`/`iB`. Anything else is a TypeError naming the input.
 */
export function parseSize (text: string): number {
  const m = SIZE.exec(text.trim())
  const unit = m !== null ? UNITS[m[2]!.toUpperCase()] : undefined
  if (m === null || unit === undefined) throw new TypeError(`${JSON.stringify(text)} is not a size: write a number with an optional unit K, M, G or T (e.g. 500M, 20G)`)
  const n = Math.floor(Number(m[1]) * unit)
  if (!Number.isSafeInteger(n)) throw new TypeError(`${JSON.stringify(text)} is too large a size`)
  return n
}
