/**
 * The /v1 HTTP API over real HTTP, a real SQLite home and the real CLI commands: tokens (create via
 * `meshpilot token create`, scopes, expiry, revocation), 401/403/413/429, exec through invoke with its
 * audit entry, reads, revoke, add-pc progress as SSE, and every JSON answer validated against
 * GET /v1/openapi.json (ajv, JSON Schema 2020-12).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import * as path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { pino } from 'pino';
import { HttpConfigSchema, writeConfig } from '../capabilities/config.js';
import { runCli } from '../launcher/cli.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { ROUTES } from '../launcher/http/api/openapi.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import { makeTempDir } from './helpers/tmp.js';

const silent = pino({ level: 'silent' });
let home: { dir: string; cleanup(): void };
let rt: Runtime;
let srv: RunningHttpServer;
let validate: (method: string, url: string, status: number, body: unknown) => void;
let checked = 0;

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(argv, { out: (t) => (out += t), err: (t) => (err += t), isTTY: false });
  return { code, out, err };
}

async function tokenFor(name: string, device: string, capability: string, extra: string[] = []): Promise<string> {
  const r = await cli('token', 'create', name, '--device', device, '--capability', capability, '--expires', '30d', '--rate', '1000/min', ...extra);
  expect(r.code, r.err).toBe(0);
  return r.out.trim();
}

interface Answer { status: number; json: any; headers: Headers } // eslint-disable-line @typescript-eslint/no-explicit-any -- answers are checked against the OpenAPI schema

async function api(method: string, url: string, opts: { token?: string; body?: unknown; raw?: string; s?: RunningHttpServer } = {}): Promise<Answer> {
  const s = opts.s ?? srv;
  const res = await fetch(`${s.url}${url}`, {
    method,
    headers: { ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}), ...(opts.body !== undefined || opts.raw !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(opts.raw !== undefined ? { body: opts.raw } : opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
  });
  const text = await res.text();
  const json = res.headers.get('content-type')?.includes('application/json') ? JSON.parse(text) : text;
  validate(method, url, res.status, json);
  return { status: res.status, json, headers: res.headers };
}

async function start(http: Record<string, unknown> = {}): Promise<RunningHttpServer> {
  return startHttpServer({ runtime: rt, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0', max_body_bytes: 4096, ...http }), logger: silent }, [apiSurface()]);
}

beforeAll(async () => {
  home = makeTempDir('mp-api-');
  process.env['MESHPILOT_HOME'] = home.dir;
  rt = openRuntime({ root: home.dir });
  writeFileSync(path.join(rt.home.manifests, 'box.yaml'), [
    'device: box', 'os: linux', 'transport: { kind: local }', 'capabilities:',
    '  sys.info: {}', `  fs.list: { paths_allowed: ["${home.dir}/**"] }`, '  shell.exec: { binaries: ["echo"], approval: always }', '',
  ].join('\n'));
  // add-pc and revoke read the config (no homeserver is contacted: a dry run, and a device without a bot account)
  writeConfig(rt.home.config, { matrix: { homeserver_url: 'http://127.0.0.1:9' }, operators: ['@op:example.org'] });
  srv = await start();
  const doc = await (await fetch(`${srv.url}/v1/openapi.json`)).json() as { openapi: string; components: { schemas: Record<string, unknown> }; paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>> };
  expect(doc.openapi).toBe('3.1.0');
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  ajv.addSchema({ $id: 'https://meshpilot.local/openapi', components: doc.components });
  const compiled = new Map<string, ReturnType<typeof ajv.compile>>();
  validate = (method, url, status, body) => {
    const pathname = url.split('?')[0]!;
    const route = ROUTES.find((r) => r.method === method.toLowerCase() && new RegExp(`^${r.path.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(pathname));
    expect(route, `${method} ${pathname} is in the OpenAPI document`).toBeDefined();
    const resp = doc.paths[route!.path]![route!.method]!.responses[String(status)];
    expect(resp, `${method} ${pathname} ${status} is a documented answer`).toBeDefined();
    const schema = resp!.content?.['application/json']?.schema;
    if (!schema) {
      expect(typeof body, `${method} ${pathname} ${status} answered JSON the document does not describe`).toBe('string');
      return;
    }
    const key = `${route!.path} ${method} ${status}`;
    let v = compiled.get(key);
    if (!v) {
      v = ajv.compile({ $id: `https://meshpilot.local/openapi/check/${compiled.size}`, ...(schema as object), $ref: undefined, allOf: [{ $ref: `https://meshpilot.local/openapi${(schema as { $ref?: string }).$ref ?? ''}` }] } as object);
      compiled.set(key, v);
    }
    // Inline schemas (none today for answers) would need their own compile; every documented answer refers to a component.
    expect((schema as { $ref?: string }).$ref, key).toBeDefined();
    expect(v(body), `${key}: ${JSON.stringify(v.errors)}\n${JSON.stringify(body).slice(0, 500)}`).toBe(true);
    checked++;
  };
}, 60_000);

afterAll(async () => {
  await srv?.close();
  await rt?.close();
  delete process.env['MESHPILOT_HOME'];
  home?.cleanup();
});

describe('/v1 API', () => {
  it('exec runs through invoke with actor api:<name> and answers the result with its audit seq and hash', async () => {
    const token = await tokenFor('ci', 'box,local', 'sys.*,fs.*');
    expect(token).toMatch(/^mp_[A-Za-z0-9_-]{43}$/);
    const r = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'sys.info', args: {} } });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ ok: true, device: 'box', capability: 'sys.info', decision: 'allowed' });
    expect(r.json.result.stdout.length).toBeGreaterThan(0);
    const entry = rt.audit.get('box', r.json.audit.seq);
    expect(entry?.hash).toBe(r.json.audit.hash);
    expect(entry).toMatchObject({ actor: 'api:ci', capability: 'sys.info', outcome: 'ok' });
    expect(r.headers.get('ratelimit-policy')).toMatch(/^"token-[A-Za-z0-9_-]{8}";q=1000;w=60$/);
    expect(r.headers.get('ratelimit')).toMatch(/;r=999;t=\d+$/);
    // token ls shows the prefix and the last use, never the token
    const ls = await cli('token', 'ls');
    expect(ls.out).toContain(`ci  mp_${token.slice(3, 11)}…  devices=box,local  capabilities=sys.*,fs.*`);
    expect(ls.out).not.toContain(token);
    expect(ls.out).not.toMatch(/ci .*last used never/);
    // the database holds the hash and the prefix only
    const row = rt.db.prepare('SELECT * FROM api_tokens WHERE name = ?').get('ci') as Record<string, unknown>;
    expect(JSON.stringify(row)).not.toContain(token.slice(11));
  });

  it('a denial by the manifest and bad capability arguments are ExecResults with their audit entries (403, 400)', async () => {
    const token = await tokenFor('ci2', 'box', 'fs.*');
    const denied = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'fs.list', args: { path: '/etc' } } });
    expect(denied.status).toBe(403);
    expect(denied.json).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
    expect(rt.audit.get('box', denied.json.audit.seq)).toMatchObject({ actor: 'api:ci2', decision: 'denied' });
    // any capability name passes the body check (vm.image.import has three parts); invoke decides
    const unknown = await api('POST', '/v1/exec', { token: await tokenFor('ci3', 'box', '*'), body: { device: 'box', capability: 'vm.image.import', args: {} } });
    expect(unknown.json.decision).toBe('denied');
    expect(unknown.json.code).not.toBe('usage');
    expect(unknown.json.audit.seq).toBeGreaterThan(0);
    const bad = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'fs.list', args: { path: 42 } } });
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe('invalid_args');
  });

  it('401 without a token, with a malformed, unknown, expired or revoked one; never a stack trace', async () => {
    const body = { device: 'box', capability: 'sys.info' };
    const none = await api('POST', '/v1/exec', { body });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await api('POST', '/v1/exec', { token: 'hunter2', body })).json).toEqual({ code: 'auth', message: 'that is not a meshpilot API token' });
    expect((await api('POST', '/v1/exec', { token: `mp_${'A'.repeat(43)}`, body })).json).toEqual({ code: 'auth', message: 'unknown token' });

    // expired: made 31 days ago with a 30-day expiry
    const past = new TokenStore(rt.db, rt.audit, () => Date.now() - 31 * 86400_000);
    const old = past.create({ name: 'old', devices: ['*'], capabilities: ['*'], expiresInS: 30 * 86400, rate: { count: 60, windowS: 60 }, by: 'test' }).token;
    expect((await api('POST', '/v1/exec', { token: old, body })).json).toEqual({ code: 'auth', message: 'this token has expired' });

    const token = await tokenFor('soon-revoked', 'box', 'sys.*');
    expect((await api('POST', '/v1/exec', { token, body })).status).toBe(200);
    const rv = await cli('token', 'revoke', 'soon-revoked');
    expect(rv.code).toBe(0);
    const after = await api('POST', '/v1/exec', { token, body });
    expect(after.status).toBe(401);
    expect(after.json).toEqual({ code: 'auth', message: 'this token was revoked' });
    // create and revoke are in the _api chain, with the CLI user as actor
    const apiChain = rt.audit.entriesAfter('_api', 0, 1000);
    expect(apiChain.filter((e) => (e.args as { name?: string }).name === 'soon-revoked').map((e) => e.capability)).toEqual(['token.create', 'token.revoke']);
    expect(rt.audit.verify('_api').ok).toBe(true);
  });

  it('scopes are checked before invoke: 403, audited as denied in _api, nothing in the device chain', async () => {
    const token = await tokenFor('narrow', 'box', 'sys.info');
    const headBefore = rt.audit.head('box');
    const cap = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'fs.list', args: { path: home.dir } } });
    expect(cap.status).toBe(403);
    expect(cap.json.code).toBe('forbidden');
    const dev = await api('POST', '/v1/exec', { token, body: { device: 'local', capability: 'sys.info' } });
    expect(dev.status).toBe(403);
    expect(rt.audit.head('box')).toEqual(headBefore);
    const denials = rt.audit.entriesAfter('_api', 0, 1000).filter((e) => e.actor === 'api:narrow');
    expect(denials.map((e) => [e.capability, e.decision, (e.args as { device: string }).device])).toEqual([['api.exec', 'denied', 'box'], ['api.exec', 'denied', 'local']]);
    // reads see only the devices in scope
    const list = await api('GET', '/v1/devices', { token });
    expect(list.json.devices.map((d: { name: string }) => d.name)).toEqual(['box']);
    expect((await api('GET', '/v1/devices/local', { token })).status).toBe(404);
    expect((await api('GET', '/v1/audit?device=local', { token })).status).toBe(403);
  });

  it('expiry is required and at most a year; names are unique among live tokens', async () => {
    expect((await cli('token', 'create', 'x', '--device', 'box', '--capability', 'sys.info')).code).toBe(2);
    const long = await cli('token', 'create', 'x', '--device', 'box', '--capability', 'sys.info', '--expires', '2y');
    expect(long.code).toBe(2);
    expect(long.err).toMatch(/1 year/);
    await tokenFor('dup', 'box', 'sys.info');
    expect((await cli('token', 'create', 'dup', '--device', 'box', '--capability', 'sys.info', '--expires', '1d')).err).toMatch(/exists/);
  });

  it('429 past the token\'s rate, with Retry-After and RateLimit headers', async () => {
    const r = await cli('token', 'create', 'slow', '--device', 'box', '--capability', 'sys.*', '--expires', '1d', '--rate', '2/min');
    const token = r.out.trim();
    const body = { device: 'box', capability: 'sys.info' };
    expect((await api('POST', '/v1/exec', { token, body })).status).toBe(200);
    expect((await api('POST', '/v1/exec', { token, body })).status).toBe(200);
    const over = await api('POST', '/v1/exec', { token, body });
    expect(over.status).toBe(429);
    expect(over.json.code).toBe('rate_limited');
    expect(Number(over.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Number(over.headers.get('retry-after'))).toBeLessThanOrEqual(30);
    expect(over.headers.get('ratelimit-policy')).toMatch(/;q=2;w=60$/);
    expect(over.headers.get('ratelimit')).toMatch(/;r=0;t=\d+$/);
  });

  it('failed authentication is limited per client address: past the limit even a good token waits', async () => {
    const s = await start({ auth_failures_per_min: 3 });
    try {
      const good = await tokenFor('good', 'box', 'sys.*');
      for (let i = 0; i < 3; i++) expect((await api('GET', '/v1/devices', { token: `mp_${'B'.repeat(43)}`, s })).status).toBe(401);
      const blocked = await api('GET', '/v1/devices', { token: good, s });
      expect(blocked.status).toBe(429);
      expect(blocked.headers.get('retry-after')).toMatch(/^\d+$/);
      // the main server (another limiter) still answers the good token
      expect((await api('GET', '/v1/devices', { token: good })).status).toBe(200);
    } finally { await s.close(); }
  });

  it('bad bodies are 400 {code, message}; bodies over the limit 413', async () => {
    const token = await tokenFor('bodies', 'box', 'sys.*');
    const notJson = await api('POST', '/v1/exec', { token, raw: '{"device": ' });
    expect(notJson.status).toBe(400);
    expect(notJson.json.code).toBe('usage');
    const wrong = await api('POST', '/v1/exec', { token, body: { device: 'BOX!', capability: 'sys.info' } });
    expect(wrong.status).toBe(400);
    expect(wrong.json.message).toMatch(/^bad body: device:/);
    const extra = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'sys.info', sudo: true } });
    expect(extra.status).toBe(400);
    const big = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'sys.info', args: { pad: 'x'.repeat(5000) } } });
    expect(big.status).toBe(413);
    expect(big.json.code).toBe('too_large');
    // a chunked body with no Content-Length is counted too
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request(`${srv.url}/v1/exec`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write('x'.repeat(1000));
      req.end();
    });
    expect(chunked).toBe(413);
  });

  it('a call that needs approval with no device bot to ask is rejected, and says why', async () => {
    const token = await tokenFor('approver', 'box', 'shell.*');
    const r = await api('POST', '/v1/exec', { token, body: { device: 'box', capability: 'shell.exec', args: { argv: ['echo', 'hi'] } } });
    let result = r.json;
    if (r.status === 202) {
      expect(r.json.poll).toBe(`/v1/approvals/${r.json.approval.id}`);
      const polled = await api('GET', `${r.json.poll}?wait=5`, { token });
      expect(polled.json.state).toBe('rejected');
      result = polled.json.result;
    }
    expect(result).toMatchObject({ ok: false, decision: 'rejected', error: { code: 'approval_rejected' } });
    expect(result.error.message).toMatch(/no device bot is running for box/);
    // another token cannot see the approval
    if (r.status === 202) expect((await api('GET', r.json.poll, { token: await tokenFor('other', '*', '*') })).status).toBe(404);
  });

  it('reads: devices, a device, audit pages, audit verify', async () => {
    const token = await tokenFor('reader', '*', '*');
    const list = await api('GET', '/v1/devices', { token });
    expect(list.json.devices.map((d: { name: string }) => d.name)).toEqual(['box', 'local']);
    const box = await api('GET', '/v1/devices/box', { token });
    expect(box.json).toMatchObject({ name: 'box', valid: true, transport: 'local', capabilities: 3, bot: null });
    expect(box.json.manifest.capabilities).toContainEqual({ name: 'shell.exec', risk: 'exec', approval: true });
    expect(box.json.audit_head).toEqual(rt.audit.head('box'));
    const page = await api('GET', '/v1/audit?device=box&after=1&limit=2', { token });
    expect(page.json.entries.map((e: { seq: number }) => e.seq)).toEqual([2, 3]);
    expect(page.json.next_after).toBe(3);
    expect((await api('GET', '/v1/audit?device=box&limit=5000', { token })).status).toBe(400);
    const v = await api('GET', '/v1/audit/verify', { token });
    expect(v.json.ok).toBe(true);
    expect(v.json.chains.map((c: { device: string }) => c.device)).toEqual(expect.arrayContaining(['box', '_api']));
  });

  it('add-pc streams its steps as server-sent events, one per step, then the result', async () => {
    const token = await tokenFor('fleet', '*', 'fleet.*');
    const res = await fetch(`${srv.url}/v1/devices`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'newbox', via: 'ssh', ssh: 'me@127.0.0.1:1', dry_run: true }) });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const text = await res.text();
    const events = [...text.matchAll(/event: (\w+)\ndata: (.*)\n/g)].map((m) => ({ type: m[1], data: JSON.parse(m[2]!) as { index?: number; total?: number; ok?: boolean } }));
    const steps = events.filter((e) => e.type === 'step');
    expect(steps.length).toBeGreaterThan(2);
    expect(steps.map((s) => s.data.index)).toEqual(steps.map((_, i) => i + 1));
    expect(events[events.length - 1]).toMatchObject({ type: 'result', data: { ok: true } });
    // a real run that fails: each step starts (step-start) and ends (step) once; the failure and the rollback are in the stream
    const failed = await fetch(`${srv.url}/v1/devices`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'newbox', via: 'ssh', ssh: 'me@127.0.0.1:1' }) });
    const ftext = await failed.text();
    const fev = [...ftext.matchAll(/event: ([\w-]+)\ndata: (.*)\n/g)].map((m) => ({ type: m[1]!, data: JSON.parse(m[2]!) as { status?: string; ok?: boolean; step?: string } }));
    const ended = fev.filter((e) => e.type === 'step');
    expect(ended.length, ftext).toBeGreaterThanOrEqual(1);
    expect(ended[ended.length - 1]!.data.status).toBe('failed');
    expect(fev.filter((e) => e.type === 'step-start').map((e) => e.data.step)).toEqual(ended.map((e) => e.data.step));
    expect(fev[fev.length - 1]).toMatchObject({ type: 'result', data: { ok: false } });
    expect(existsSync(path.join(rt.home.manifests, 'newbox.yaml'))).toBe(false);
    // a token without fleet.add-pc may not
    const no = await api('POST', '/v1/devices', { token: await tokenFor('nofleet', '*', 'sys.*'), body: { name: 'newbox', via: 'ssh', ssh: 'me@127.0.0.1:1' } });
    expect(no.status).toBe(403);
  });

  it('revoke needs fleet.revoke and the name repeated; it removes the device and audits it', async () => {
    const token = await tokenFor('revoker', '*', 'fleet.revoke');
    writeFileSync(path.join(rt.home.manifests, 'gone.yaml'), 'device: gone\nos: linux\ntransport: { kind: local }\ncapabilities:\n  sys.info: {}\n');
    expect((await api('DELETE', '/v1/devices/gone?confirm=nope', { token })).status).toBe(400);
    expect((await api('DELETE', '/v1/devices/gone?confirm=gone', { token: await tokenFor('notrevoker', '*', 'sys.*') })).status).toBe(403);
    const r = await api('DELETE', '/v1/devices/gone?confirm=gone', { token });
    expect(r.json.message).toBeTypeOf('string');
    expect(r.status, r.json.message).toBe(200);
    expect(existsSync(path.join(rt.home.manifests, 'gone.yaml'))).toBe(false);
    expect(rt.audit.entriesAfter('gone', 0, 100).map((e) => [e.capability, e.actor])).toContainEqual(['device.revoke', 'api:revoker']);
  });

  it('every JSON answer above matched its schema in /v1/openapi.json', () => {
    expect(checked).toBeGreaterThanOrEqual(38);
  });
});
