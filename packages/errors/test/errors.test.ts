import assert from 'node:assert/strict'
import { test } from 'node:test'
import { StrataError } from '../src/index.ts'

class PkgError extends StrataError {
  override name = 'PkgError'
}
class ThingMissingError extends PkgError {
  override name = 'ThingMissingError'
  constructor (thing: string, opts?: { cause?: unknown }) {
    super('ERR_THING_MISSING', `no thing ${thing}`, opts)
  }
}

test('a subclass keeps its name, code, message and cause, and is a StrataError', () => {
  const cause = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' })
  const err = new ThingMissingError('x', { cause })
  assert.ok(err instanceof StrataError)
  assert.ok(err instanceof PkgError)
  assert.ok(err instanceof Error)
  assert.equal(err.name, 'ThingMissingError')
  assert.equal(err.code, 'ERR_THING_MISSING')
  assert.equal(err.message, 'no thing x')
  assert.equal(err.cause, cause)
  assert.match(String(err.stack), /^ThingMissingError: no thing x/)
})

test('without a cause there is no cause property', () => {
  assert.equal('cause' in new ThingMissingError('x'), false)
})

test('the base names itself', () => {
  assert.equal(new StrataError('ERR_X', 'x').name, 'StrataError')
})

