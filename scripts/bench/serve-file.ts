// The central cache of the HTTP baseline: serves one file over HTTP/1.1, the way a
// cache server (nginx, a CI cache service) would hand out a prebuilt archive.
//
//   node scripts/bench/serve-file.ts FILE ADDRESS PORT [CERT KEY]
//
// With CERT and KEY (PEM files), it serves HTTPS, TLS 1.3 only, as a cache on a
// network that is not trusted must.
// GET /<basename of FILE> streams the file with Content-Length; anything else is 404.
// Prints `listening` once bound; exits on SIGTERM.

import { createReadStream, readFileSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import { basename } from 'node:path'
import { pipeline } from 'node:stream/promises'

const [file, address, port, cert, key] = process.argv.slice(2)
if (file === undefined || address === undefined || port === undefined) {
  console.error('usage: node scripts/bench/serve-file.ts FILE ADDRESS PORT [CERT KEY]')
  process.exit(2)
}
const size = statSync(file).size
const path = '/' + basename(file)

const handler = (req: IncomingMessage, res: ServerResponse): void => {
  if (req.method !== 'GET' || req.url !== path) {
    res.writeHead(404).end()
    return
  }
  res.writeHead(200, { 'content-type': 'application/zstd', 'content-length': size })
  // Large reads: the default 64 KiB would cost a syscall and a chunk per 64 KiB.
  pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), res).catch(() => {
    // A client that hung up; nothing to serve it any more.
  })
}
const server = cert !== undefined && key !== undefined
  ? createTlsServer({ cert: readFileSync(cert), key: readFileSync(key), minVersion: 'TLSv1.3' }, handler)
  : createServer(handler)
server.listen(Number(port), address, () => console.log('listening'))
process.on('SIGTERM', () => process.exit(0))
