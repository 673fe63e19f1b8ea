import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { cidOf, DAG_CBOR, RAW } from '@strata/chunker'
import { SOCKET_NAME } from '../src/index.ts'
import { startDaemon } from './helpers.ts'

/** POSTs `body` to the daemon's control socket: the HTTP status and the parsed answer. */
async function post (socketPath: string, path: string, body: string, method = 'POST'): Promise<{ status: number, json: { error?: { code: string, message: string } } }> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as { error?: { code: string, message: string } } }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function socketOf (t: TestContext): Promise<string> {
  const d = await startDaemon(t, { providerTimeoutMs: 200 })
  return `${d.dataDir}/${SOCKET_NAME}`
}

test('a failed control request answers the status its error code maps to, with the code', async (t) => {
  const socket = await socketOf(t)
  const unknownKey = cidOf(DAG_CBOR, dagCbor.encode({ nobody: 'has it' })).toString()
  const unknownBlock = cidOf(RAW, new Uint8Array([1, 2, 3])).toString()
  const cases: Array<[string, string, number, string]> = [
    ['/v1/nothing-here', '{}', 404, 'ERR_NOT_FOUND'],
    ['/v1/lookup', '{"key":"not a cid"}', 400, 'ERR_BAD_REQUEST'],
    ['/v1/lookup', 'not json', 400, 'ERR_BAD_REQUEST'],
    ['/v1/lookup', JSON.stringify({ key: unknownKey }), 404, 'ERR_RECORD_NOT_FOUND'],
    ['/v1/store/block', JSON.stringify({ cid: unknownBlock }), 404, 'ERR_BLOCK_NOT_FOUND'],
    ['/v1/publish', JSON.stringify({ key: unknownKey }), 404, 'ERR_RECORD_NOT_FOUND'],
    ['/v1/store/record/put', JSON.stringify({ key: `runner/record/${unknownKey}/default`, value: 'AAAA' }), 500, 'ERR_PROTOCOL_VIOLATION']
  ]
  for (const [path, body, status, code] of cases) {
    const r = await post(socket, path, body)
    assert.equal(r.json.error?.code, code, `${path} ${body}`)
    assert.equal(r.status, status, `${path} ${body}`)
  }
  const get = await post(socket, '/v1/status', '', 'GET')
  assert.deepEqual([get.status, get.json.error?.code], [404, 'ERR_NOT_FOUND'], 'only POST is served')
})
