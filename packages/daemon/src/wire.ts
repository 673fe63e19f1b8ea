import type { Stream } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'
import { encodeFrameLength } from './codec.ts'

/** Appends one length-prefixed message made of `parts`. */
export function appendFrame (out: Uint8ArrayList, ...parts: Array<Uint8Array | Uint8ArrayList>): void {
  out.append(encodeFrameLength(parts.reduce((n, p) => n + p.byteLength, 0)))
  for (const p of parts) out.append(p)
}

/** Writes bytes, waiting for the stream to drain (at most `drainMs`) only when its buffer is full. */
export async function sendRaw (stream: Stream, bytes: Uint8ArrayList, drainMs: number, signal?: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal: signal === undefined ? AbortSignal.timeout(drainMs) : AbortSignal.any([signal, AbortSignal.timeout(drainMs)]) })
}
