import { isMap, isScalar, isSeq } from 'yaml'

/** How an error in strata.yml names the value it did not expect: its kind, and a short quote. */
export function describeNode (node: unknown): string {
  if (isMap(node)) return 'a mapping'
  if (isSeq(node)) return 'a list'
  if (isScalar(node)) {
    const v = node.value
    if (v === null) return 'nothing (null)'
    if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`
    return `${typeof v === 'number' ? 'the number' : typeof v === 'boolean' ? 'the boolean' : 'the value'} ${String(v)}`
  }
  if (node === null || node === undefined) return 'nothing'
  return 'an alias or tag'
}
