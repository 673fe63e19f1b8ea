/**
 * The base of every error a strata package throws. `code` is stable and
 * documented in the package's README: callers branch on it, never on the message.
 * `name` is the class's own (each subclass sets it), and `cause` is kept.
 */
export class StrataError extends Error {
  override name: string = 'StrataError'
  readonly code: string
  constructor (code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
  }
}

