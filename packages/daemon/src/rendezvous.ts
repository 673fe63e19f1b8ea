/**
 * Rendezvous (highest random weight) hashing: every peer ranks the same candidates
 * for the same item alike, with no coordination. The block exchange picks each
 * block's owner among the peers sharing a fetch with it; replication picks the
 * peers that pull a new layer. The score is FNV-1a over both strings and a final
 * mix: cheap enough to run for every block of a layer.
 */
export function score (item: string, peer: string): number {
  let h = 0x811c9dc5
  for (const str of [item, peer]) {
    for (let i = 0; i < str.length; i++) {
      h ^= str.charCodeAt(i)
      h = Math.imul(h, 0x01000193)
    }
  }
  // Peer ids share long prefixes: mix the last bits into all of them.
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  return h >>> 0
}

/** The `n` candidates that rank highest for `item` (ties broken by peer id, so every peer agrees). */
export function top (item: string, candidates: Iterable<string>, n: number): string[] {
  return [...candidates]
    .map((peer) => ({ peer, score: score(item, peer) }))
    .sort((a, b) => b.score - a.score || (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0))
    .slice(0, n)
    .map((x) => x.peer)
}
