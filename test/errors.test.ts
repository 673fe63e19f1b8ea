import assert from 'node:assert/strict'
import { test } from 'node:test'
import { StrataError } from '@strata/errors'
import * as chunker from '@strata/chunker'
import * as daemon from '@strata/daemon'
import * as records from '@strata/records'
import * as runner from '@strata/runner'
import * as store from '@strata/store'

const packages = { chunker, daemon, records, runner, store }

/** Arguments any of the error constructors takes without failing: strings, lists and positions at once. */
const loose = (): unknown => Object.assign(['x'], { file: 'f', line: 1, column: 1, cause: new Error('x') })

test('every error class a package exports is a StrataError with its own name and a code', () => {
  let seen = 0
  for (const [pkg, mod] of Object.entries(packages)) {
    for (const [name, value] of Object.entries(mod)) {
      if (typeof value !== 'function' || !(value.prototype instanceof Error)) continue
      seen++
      assert.ok(value.prototype instanceof StrataError, `${pkg}: ${name} does not extend StrataError`)
      const Ctor = value as unknown as new (...args: unknown[]) => StrataError
      let err = new Ctor(loose(), loose(), loose(), loose())
      // The bases (and ControlError) take the code first.
      if (typeof err.code !== 'string') err = new Ctor('ERR_TEST', loose(), loose(), loose())
      assert.equal(err.name, name, `${pkg}: ${name} names itself ${err.name}`)
      assert.equal(typeof err.code, 'string', `${pkg}: ${name} has no code`)
    }
  }
  assert.ok(seen > 40, `only ${seen} error classes found`)
})
