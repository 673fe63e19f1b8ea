import { lgetxattrs } from '@strata/sys'

/** The overlay filesystem's own attributes: a layer expresses them as entry types and flags only. */
export const OVERLAY_XATTR = /^(trusted|user)\.overlay\./

/**
 * Which namespace's `overlay.opaque` the mount honours: `trusted` for a mount
 * without `userxattr` (the runner's, as root), `user` for one with it (unprivileged).
 */
export type OpaqueNamespace = 'trusted' | 'user'

export function defaultOpaqueNamespace (): OpaqueNamespace {
  return (process.geteuid?.() ?? 0) === 0 ? 'trusted' : 'user'
}

/**
 * The xattrs a layer carries: `user.*`, the overlay's excepted. The peer policy
 * keeps the same names, so a layer reads back the same on every machine.
 */
export function isCarriedXattr (name: string): boolean {
  return name.startsWith('user.') && !name.startsWith('user.overlay.')
}

// Overlay bookkeeping the kernel reads from upper dirs only: in a lower dir it
// changes nothing, so it stays where it is and is not carried.
const INERT_OVERLAY = new Set(['origin', 'impure', 'nlink', 'upper'])

// Set by the host's security module whatever a step does: neither carried nor removed.
const HOST_XATTRS = new Set(['security.selinux'])

export interface XattrReading {
  /** What the layer carries, sorted by name. */
  xattrs: Array<[string, Uint8Array]> | undefined
  /** The honoured `overlay.opaque` is `y` on a directory. */
  opaque: boolean
  /**
   * Attributes that would show through a mount (or be misread by the overlay)
   * but that a layer does not carry: a normalized tree has them removed.
   */
  foreign: string[] | undefined
}

/** Sorts the extended attributes of `abs` into what a layer carries, the opaque mark, and the rest. */
export function readXattrs (abs: string, isDir: boolean, ns: OpaqueNamespace): XattrReading {
  let opaque = false
  let foreign: string[] | undefined
  const kept: Array<[string, Uint8Array]> = []
  const own = `${ns}.overlay.`
  for (const [name, value] of lgetxattrs(abs)) {
    if (name.startsWith(own)) {
      const key = name.slice(own.length)
      if (key === 'opaque' && isDir && value.length === 1 && value[0] === 0x79 /* y */) {
        opaque = true
        continue
      }
      if (INERT_OVERLAY.has(key)) continue
      // redirect, metacopy, whiteout, an escaped `overlay.overlay.*`, opaque on a
      // file or with another value: a lower dir would act on or show them.
    } else if (isCarriedXattr(name)) {
      kept.push([name, new Uint8Array(value)])
      continue
    } else if (HOST_XATTRS.has(name)) {
      continue
    }
    (foreign ??= []).push(name)
  }
  return { xattrs: kept.length > 0 ? kept : undefined, opaque, foreign }
}
