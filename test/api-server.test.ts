/**
 * launcher/http/server.ts and embedded.ts: the HTTP server core, over real HTTP on a real port.
 * Loopback by default, Host check, {code, message} errors without stack traces, the body limit,
 * request log lines without secrets, and the embedded default of `meshpilot up` without a config.
 */
import { describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { Writable } from 'node:stream';
import { Hono } from 'hono';
import { pino } from 'pino';
import { HttpConfigSchema } from '../capabilities/config.js';
import { openRuntime } from '../launcher/runtime.js';
import { runUp } from '../launcher/up.js';
import { parseListen, startHttpServer } from '../launcher/http/server.js';
import type { HttpEnv } from '../launcher/http/types.js';
import { tempDir } from './helpers/tmp.js';

function capture(): { logger: pino.Logger; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const dest = new Writable({ write(chunk: Buffer, _e, cb) { out.push(chunk.toString()); cb(); } });
  const logger = pino({ level: 'debug', redact: ['authorization', '*.authorization'] }, dest);
  return { logger, lines: () => out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/** Raw request (so the Host header and a streamed body are ours to set). */
function raw(port: number, opts: { method?: string; path: string; host?: string; body?: Buffer; headers?: Record<string, string> }): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path, headers: { host: opts.host ?? `127.0.0.1:${port}`, ...opts.headers } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    if (opts.body) req.end(opts.body); else req.end();
  });
}

async function server(http: Partial<{ listen: string; max_body_bytes: number }> = {}) {
  const rt = openRuntime({ root: tempDir() });
  const log = capture();
  const test = new Hono<HttpEnv>();
  test.post('/echo', async (c) => c.json({ n: (await c.req.text()).length }));
  test.get('/boom', () => { throw new Error('secret-internal-detail at /home/x/file.ts:12'); });
  const s = await startHttpServer({ runtime: rt, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0', ...http }), logger: log.logger }, [{ path: '/t', create: () => test }]);
  return { s, rt, log, async close() { await s.close(); await rt.close(); } };
}

describe('http server core', () => {
  it('defaults to 127.0.0.1:7400 and parses host:port forms', () => {
    expect(HttpConfigSchema.parse({}).listen).toBe('127.0.0.1:7400');
    expect(parseListen('[::1]:8080')).toEqual({ host: '::1', port: 8080 });
    expect(parseListen('0.0.0.0:1')).toEqual({ host: '0.0.0.0', port: 1 });
    expect(() => parseListen('7400')).toThrow(/host:port/);
    expect(HttpConfigSchema.safeParse({ listen: 'nohostport' }).success).toBe(false);
  });

  it('binds loopback, answers unknown paths and thrown errors as {code, message} without the stack', async () => {
    const { s, log, close } = await server();
    try {
      expect(s.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const nf = await fetch(`${s.url}/nope`);
      expect(nf.status).toBe(404);
      expect(await nf.json()).toEqual({ code: 'not_found', message: 'no such endpoint: GET /nope' });
      const boom = await fetch(`${s.url}/t/boom`);
      expect(boom.status).toBe(500);
      const b = await boom.json() as { code: string; message: string };
      expect(b.code).toBe('internal');
      expect(JSON.stringify(b)).not.toMatch(/secret-internal-detail|file\.ts|at /);
      expect(boom.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
      // the error is in the log, with the request id
      expect(log.lines().some((l) => l['msg'] === 'request failed' && l['rid'] === boom.headers.get('x-request-id'))).toBe(true);
    } finally { await close(); }
  });

  it('refuses a Host that is not a loopback name while bound to loopback (DNS rebinding)', async () => {
    const { s, close } = await server();
    try {
      const bad = await raw(s.port, { path: '/t/nope', host: 'evil.example:80' });
      expect(bad.status).toBe(403);
      expect(JSON.parse(bad.body)).toMatchObject({ code: 'forbidden' });
      expect((await raw(s.port, { path: '/nope', host: `localhost:${s.port}` })).status).toBe(404);
    } finally { await close(); }
  });

  it('bounds request bodies: 413 {code: too_large} by Content-Length and for a chunked body that grows past it', async () => {
    const { s, close } = await server({ max_body_bytes: 2048 });
    try {
      const ok = await raw(s.port, { method: 'POST', path: '/t/echo', body: Buffer.alloc(2000, 'a') });
      expect(ok.status).toBe(200);
      const big = await raw(s.port, { method: 'POST', path: '/t/echo', body: Buffer.alloc(5000, 'a') });
      expect(big.status).toBe(413);
      expect(JSON.parse(big.body)).toMatchObject({ code: 'too_large' });
      const chunked = await raw(s.port, { method: 'POST', path: '/t/echo', body: Buffer.alloc(5000, 'a'), headers: { 'transfer-encoding': 'chunked' } });
      expect(chunked.status).toBe(413);
    } finally { await close(); }
  });

  it('logs one line per request with method, path (no query), status and time, never the Authorization header', async () => {
    const { s, log, close } = await server();
    try {
      await fetch(`${s.url}/nope?token=supersecretquery`, { headers: { authorization: 'Bearer mp_supersecrettoken' } });
      const lines = log.lines().filter((l) => l['msg'] === 'request');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ method: 'GET', path: '/nope', status: 404 });
      expect(typeof lines[0]!['ms']).toBe('number');
      expect(JSON.stringify(log.lines())).not.toMatch(/supersecret/);
    } finally { await close(); }
  });

  it('meshpilot up without a Matrix config keeps running and serves, printing the URL, then stops', async () => {
    const root = tempDir();
    const rt = openRuntime({ root });
    let out = '';
    let stop!: () => void;
    const until = new Promise<void>((r) => (stop = r));
    const prev = process.env['MESHPILOT_HTTP_LISTEN'];
    process.env['MESHPILOT_HTTP_LISTEN'] = '127.0.0.1:0';
    try {
      const done = runUp(rt, { out: (t) => (out += t), err: (t) => (out += t), isTTY: false }, { until });
      for (let i = 0; i < 200 && !/web: dashboard/.test(out); i++) await new Promise((r) => setTimeout(r, 50));
      expect(out).toContain('Matrix is not configured yet');
      const url = /web: dashboard (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)?.[1];
      expect(url, out).toBeDefined();
      const r = await fetch(`${url}/v1/health`);
      expect(r.status).toBe(200);
      stop();
      expect(await done).toBe(0);
      await expect(fetch(`${url}/v1/health`)).rejects.toThrow();
    } finally {
      if (prev === undefined) delete process.env['MESHPILOT_HTTP_LISTEN']; else process.env['MESHPILOT_HTTP_LISTEN'] = prev;
      await rt.close();
    }
  }, 30_000);
});
