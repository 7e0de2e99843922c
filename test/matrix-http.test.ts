/** bots/matrix/sdk-http.ts: the SDK's HTTP function on node:http, against real sockets. */
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { matrixRequest, type MatrixHttpResponse } from '../bots/matrix/sdk-http.js';

/**
 * A raw HTTP/1.1 server whose `answer(connectionNo, requestNo)` decides per request: true answers 200
 * `ok` and keeps the connection; false destroys the socket without a byte of answer (what a kept-alive
 * connection does when the server's idle timer closes it as a request arrives).
 */
function rawServer(answer: (conn: number, req: number) => boolean): Promise<{ url: string; connections: () => number; close: () => void }> {
  let conns = 0;
  const server = net.createServer((sock) => {
    const conn = ++conns;
    let reqs = 0;
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      while (buf.includes('\r\n\r\n')) {
        buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
        reqs += 1;
        if (!answer(conn, reqs)) return void sock.destroy();
        sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
      }
    });
    sock.on('error', () => {});
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      resolve({ url: `http://127.0.0.1:${port}`, connections: () => conns, close: () => server.close() });
    }),
  );
}

const get = (uri: string): Promise<MatrixHttpResponse> =>
  new Promise((resolve, reject) => matrixRequest({ uri, method: 'GET' }, (err, res) => (err ? reject(err) : resolve(res!))));

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

describe('matrix HTTP', () => {
  it('sends a request again on a new connection when a kept-alive one was closed under it', async () => {
    // every connection answers its first request only: the second request finds its pooled socket dead
    const srv = await rawServer((_conn, req) => req === 1);
    closers.push(srv.close);
    expect((await get(`${srv.url}/a`)).body).toBe('ok');
    const before = srv.connections();
    const res = await get(`${srv.url}/b`);
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe('ok');
    expect(srv.connections()).toBe(before + 1);
  });

  it('reports a connection closed before any answer on a fresh socket, without retrying', async () => {
    const srv = await rawServer(() => false);
    closers.push(srv.close);
    const err = (await get(`${srv.url}/x`).catch((e: unknown) => e)) as NodeJS.ErrnoException;
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ECONNRESET');
    expect(srv.connections()).toBe(1);
  });
});
