/** bots/http.ts: the bot's fetch (and Headers) on node:http, against real HTTP servers on loopback. */
import { afterEach, describe, expect, it } from 'vitest';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { HttpHeaders, httpFetch } from '../bots/http.js';

interface Seen { method: string; url: string; headers: http.IncomingHttpHeaders; body: string }

/** A real HTTP server on 127.0.0.1 whose handler sees each request with its whole body. */
async function server(handler: (req: Seen, res: http.ServerResponse) => void): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(s);
      handler(s, res);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen };
}

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

describe('HttpHeaders', () => {
  it('behaves like WHATWG Headers: case-insensitive, combined values, sorted iteration, Set-Cookie apart', () => {
    const h = new HttpHeaders({ 'Content-Type': 'application/json', 'X-Multi': ['a', 'b'] });
    h.append('x-multi', ' c ');
    h.append('Set-Cookie', 'a=1');
    h.append('set-cookie', 'b=2');
    expect(h.get('content-type')).toBe('application/json');
    expect(h.get('X-MULTI')).toBe('a, b, c');
    expect(h.has('x-missing')).toBe(false);
    expect(h.get('x-missing')).toBeNull();
    expect(h.getSetCookie()).toEqual(['a=1', 'b=2']);
    expect([...h]).toEqual([['content-type', 'application/json'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['x-multi', 'a, b, c']]);
    h.set('x-multi', 'z');
    h.delete('Content-Type');
    expect([...h.keys()]).toEqual(['set-cookie', 'set-cookie', 'x-multi']);
    const seen: string[] = [];
    h.forEach((v, k) => seen.push(`${k}=${v}`));
    expect(seen).toEqual(['set-cookie=a=1', 'set-cookie=b=2', 'x-multi=z']);
    // from pairs, from another Headers (ours or the platform's)
    expect(new HttpHeaders([['A', '1'], ['a', '2']]).get('a')).toBe('1, 2');
    expect(new HttpHeaders(new Headers({ 'X-Y': 'z' })).get('x-y')).toBe('z');
    expect(new Headers([...new HttpHeaders({ 'X-Y': 'z' })]).get('x-y')).toBe('z');
  });

  it('refuses invalid names and values, as Headers does', () => {
    expect(() => new HttpHeaders({ 'bad name': 'x' })).toThrow(TypeError);
    expect(() => new HttpHeaders({ ok: 'line\r\nInjected: yes' })).toThrow(/CR, LF or NUL/);
    expect(() => new HttpHeaders([['only-one']] as unknown as [string, string][])).toThrow(/pair/);
  });
});

describe('httpFetch', () => {
  it('sends method, headers and body; reads status, headers, text and json', async () => {
    const srv = await server((req, res) => {
      res.setHeader('Set-Cookie', ['s=1', 't=2']);
      res.writeHead(201, 'Made', { 'Content-Type': 'application/json', 'X-Request-Id': 'r-1' });
      res.end(JSON.stringify({ got: req.body, method: req.method }));
    });
    const res = await httpFetch(`${srv.url}/v1/thing?q=1`, { method: 'post', headers: { 'Content-Type': 'application/json', Authorization: 'Bearer t' }, body: JSON.stringify({ a: 1 }) });
    expect(res.status).toBe(201);
    expect(res.statusText).toBe('Made');
    expect(res.ok).toBe(true);
    expect(res.headers.get('x-request-id')).toBe('r-1');
    expect(res.headers.getSetCookie()).toEqual(['s=1', 't=2']);
    expect(await res.json()).toEqual({ got: '{"a":1}', method: 'POST' });
    expect(res.bodyUsed).toBe(true);
    await expect(res.text()).rejects.toThrow(/already been consumed/);
    const seen = srv.seen[0]!;
    expect(seen.url).toBe('/v1/thing?q=1');
    expect(seen.headers['authorization']).toBe('Bearer t');
    expect(seen.headers['content-length']).toBe('7');
    // never a compressed answer: zlib stays unloaded
    expect(seen.headers['accept-encoding']).toBe('identity');
  });

  it('streams the body as an async iterable (what the Anthropic SDK reads for SSE)', async () => {
    const srv = await server((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('event: a\ndata: 1\n\n');
      setTimeout(() => res.end('event: b\ndata: 2\n\n'), 50);
    });
    const res = await httpFetch(srv.url);
    const parts: string[] = [];
    for await (const chunk of res.body!) parts.push(Buffer.from(chunk).toString('utf8'));
    expect(parts.join('')).toBe('event: a\ndata: 1\n\nevent: b\ndata: 2\n\n');
    expect(parts.length).toBeGreaterThanOrEqual(2); // really streamed, not buffered
  });

  it('follows redirects as fetch does: 303 becomes GET, 307 keeps the body, Authorization stays on its origin', async () => {
    const other = await server((req, res) => res.end(`other ${req.method} auth=${req.headers['authorization'] ?? '-'}`));
    const srv = await server((req, res) => {
      if (req.url === '/303') return void res.writeHead(303, { Location: '/landing' }).end();
      if (req.url === '/307') return void res.writeHead(307, { Location: '/landing' }).end();
      if (req.url === '/away') return void res.writeHead(302, { Location: `${other.url}/x` }).end();
      res.end(`${req.method} ${req.body} auth=${req.headers['authorization'] ?? '-'}`);
    });
    const init = { method: 'POST', body: 'payload', headers: { Authorization: 'Bearer secret' } };
    const a = await httpFetch(`${srv.url}/303`, init);
    expect(await a.text()).toBe('GET  auth=Bearer secret');
    expect(a.redirected).toBe(true);
    expect(a.url).toBe(`${srv.url}/landing`);
    expect(await (await httpFetch(`${srv.url}/307`, init)).text()).toBe('POST payload auth=Bearer secret');
    expect(await (await httpFetch(`${srv.url}/away`, { headers: { Authorization: 'Bearer secret' } })).text()).toBe('other GET auth=-');
    const manual = await httpFetch(`${srv.url}/303`, { redirect: 'manual' });
    expect(manual.status).toBe(303);
    expect(manual.headers.get('location')).toBe('/landing');
    await expect(httpFetch(`${srv.url}/303`, { redirect: 'error' })).rejects.toThrow(/redirect/);
  });

  it('bounds bodies: a declared or actual size over maxBodyBytes is E2BIG', async () => {
    const srv = await server((req, res) => {
      if (req.url === '/declared') return void res.writeHead(200, { 'Content-Length': '5000' }).end('x'.repeat(5000));
      res.writeHead(200); // chunked: no declared size
      res.end('y'.repeat(5000));
    });
    await expect((await httpFetch(`${srv.url}/declared`, { maxBodyBytes: 1000 })).text()).rejects.toMatchObject({ code: 'E2BIG' });
    await expect((await httpFetch(`${srv.url}/chunked`, { maxBodyBytes: 1000 })).text()).rejects.toMatchObject({ code: 'E2BIG' });
    const ok = await httpFetch(`${srv.url}/chunked`);
    expect((await ok.bytes(5000)).length).toBe(5000);
  });

  it('an aborted signal rejects with its reason, before or after the answer; an idle socket times out', async () => {
    const srv = await server((req, res) => {
      if (req.url === '/slow-head') return; // never answers
      res.writeHead(200);
      res.write('partial');
      // and never ends
    });
    const c1 = new AbortController();
    const p1 = httpFetch(`${srv.url}/slow-head`, { signal: c1.signal });
    setTimeout(() => c1.abort(), 50);
    await expect(p1).rejects.toMatchObject({ name: 'AbortError' });
    const c2 = new AbortController();
    const res = await httpFetch(`${srv.url}/body`, { signal: c2.signal });
    const read = res.text();
    c2.abort();
    await expect(read).rejects.toMatchObject({ name: 'AbortError' });
    await expect(httpFetch(`${srv.url}/slow-head`, { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
    await expect(httpFetch(`${srv.url}/slow-head`, { timeoutMs: 100 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
  });

  it('HEAD and 204 answers have no body; refused connections and bad input are clear errors', async () => {
    const srv = await server((req, res) => res.writeHead(req.method === 'HEAD' ? 200 : 204, { 'Content-Length': req.method === 'HEAD' ? '10' : '0' }).end());
    const head = await httpFetch(srv.url, { method: 'HEAD' });
    expect(head.body).toBeNull();
    expect(await head.text()).toBe('');
    expect((await httpFetch(srv.url, { method: 'DELETE' })).body).toBeNull();
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    await expect(httpFetch(`http://127.0.0.1:${port}/`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(httpFetch('not a url')).rejects.toThrow(/invalid URL/);
    await expect(httpFetch('ftp://127.0.0.1/')).rejects.toThrow(/unsupported URL scheme/);
    await expect(httpFetch(srv.url, { body: 'x' })).rejects.toThrow(/GET request cannot have a body/);
    await expect(httpFetch(srv.url, { method: 'POST', body: new ReadableStream() as unknown as string })).rejects.toThrow(/streams and forms are not supported/);
  });
});
