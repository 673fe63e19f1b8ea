import { lgetxattrs } from '@strata/sys'

/** The overlay filesystem's own attributes: a layer expresses them as entry types and flags only. */
export const OVERLAY_XATTR = /^(trusted|user)\.overlay\./

// The opaque marker becomes the entry's `opaque` flag; the other overlay
// attributes (origin file handles, impure, redirect...) only mean something to
// the mount that wrote them.
const OPAQUE_XATTRS = new Set(['trusted.overlay.opaque', 'user.overlay.opaque'])

/** The extended attributes a layer keeps for `abs` (sorted by name), and whether overlay marks it opaque. */
export function readXattrs (abs: string): { xattrs: Array<[string, Uint8Array]> | undefined, opaque: boolean } {
  let opaque = false
  const kept: Array<[string, Uint8Array]> = []
  for (const [name, value] of lgetxattrs(abs)) {
    if (OVERLAY_XATTR.test(name)) {
      if (OPAQUE_XATTRS.has(name) && value.length === 1 && value[0] === 0x79 /* y */) opaque = true
      continue
    }
    kept.push([name, new Uint8Array(value)])
  }
  return { xattrs: kept.length > 0 ? kept : undefined, opaque }
}
