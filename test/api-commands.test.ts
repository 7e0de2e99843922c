/**
 * The command routes derived from the declarations (launcher/http/api/commands.ts), over real HTTP, a
 * real SQLite home and the real CLI: one POST /v1/commands/<words> per declaration with the `http`
 * surface (an injected table adds its own), bodies validated by the command's own schema (errors name
 * the field), the same text as `meshpilot …` prints, scope refusals (403, audited in `_api`), a
 * confirmation asked for instead of a hang, an approval never self-granted, output bounded, and every
 * answer validated against the OpenAPI document, whose command bodies are the declarations' schemas.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { pino } from 'pino';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineCommand, isGroup } from '../capabilities/commands.js';
import { HttpConfigSchema } from '../capabilities/config.js';
import { WorkspaceStore, roleHash } from '../capabilities/workspace/store.js';
import { runCli } from '../launcher/cli.js';
import type { CliEntry, CommandContext } from '../launcher/commands/context.js';
import { CLI_COMMANDS } from '../launcher/commands/index.js';
import { HTTP_COMMAND_TABLE } from '../launcher/commands/http-table.js';
import { MAX_COMMAND_OUTPUT } from '../launcher/http/api/commands.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { apiRoutes } from '../launcher/http/api/openapi.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { makeTempDir } from './helpers/tmp.js';

const silent = pino({ level: 'silent' });
let home: { dir: string; cleanup(): void };
let rt: Runtime;
let srv: RunningHttpServer;
let extra: RunningHttpServer;
let ajv: Ajv2020;
let n = 0;

type Doc = { components: { schemas: Record<string, unknown> }; paths: Record<string, Record<string, { requestBody?: { required: boolean; content: Record<string, { schema: { properties?: Record<string, unknown>; required?: string[] } }> }; responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }> }>> };
const docs = new Map<RunningHttpServer, Doc>();

/** A command only the injected table has: prints `text` `times` times. */
const ECHO = defineCommand({
  name: 'test echo', summary: 'print a text, many times', permission: 'operator', surfaces: ['http'],
  args: z.object({ text: z.string().min(1), times: z.number().int().min(1).max(10_000_000).default(1), fail: z.boolean().optional() }),
  run: (a, ctx: CommandContext) => {
    for (let i = 0; i < a.times; i += 10_000) ctx.io.out(a.text.repeat(Math.min(10_000, a.times - i)));
    if (a.fail) ctx.setExit(1);
  },
});
const TABLE: CliEntry[] = [...HTTP_COMMAND_TABLE, ECHO as unknown as CliEntry];

interface Answer { status: number; json: any } // eslint-disable-line @typescript-eslint/no-explicit-any -- answers are checked against the OpenAPI schema

async function api(url: string, token: string, body?: unknown, s: RunningHttpServer = srv): Promise<Answer> {
  const res = await fetch(`${s.url}${url}`, {
    method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const json = (await res.json()) as unknown;
  // Every answer is one the document describes, and matches its schema.
  const schema = docs.get(s)!.paths[url]?.['post']?.responses[String(res.status)]?.content?.['application/json']?.schema;
  expect(schema?.$ref, `POST ${url} ${res.status} is a documented JSON answer`).toBeDefined();
  const v = ajv.compile({ $id: `https://meshpilot.local/openapi/cmd/${n++}`, allOf: [{ $ref: `https://meshpilot.local/openapi${schema!.$ref}` }] });
  expect(v(json), `POST ${url} ${res.status}: ${JSON.stringify(v.errors)}\n${JSON.stringify(json).slice(0, 500)}`).toBe(true);
  return { status: res.status, json };
}

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(argv, { out: (t) => (out += t), err: (t) => (err += t), isTTY: false });
  return { code, out, err };
}

function token(name: string, devices: string[], capabilities: string[]): string {
  return new TokenStore(rt.db, rt.audit).create({ name, devices, capabilities, expiresInS: 3600, rate: { count: 10_000, windowS: 60 }, by: 'test' }).token;
}

const httpNames = (t: readonly CliEntry[]): string[] => t.filter((e) => !isGroup(e) && e.surfaces.includes('http')).map((e) => e.name);

beforeAll(async () => {
  home = makeTempDir('mp-api-cmd-');
  process.env['MESHPILOT_HOME'] = home.dir;
  rt = openRuntime({ root: home.dir });
  // box: vm.ls wants approval; bare: no vm.* at all.
  writeFileSync(path.join(rt.home.manifests, 'box.yaml'), 'device: box\nos: linux\ntransport: { kind: local }\ncapabilities:\n  sys.info: {}\n  vm.ls: { approval: always }\n');
  writeFileSync(path.join(rt.home.manifests, 'bare.yaml'), 'device: bare\nos: linux\ntransport: { kind: local }\ncapabilities:\n  sys.info: {}\n');
  const store = new WorkspaceStore(rt.db);
  for (const [name, parent] of [['lead', null], ['helper', 'lead']] as const) {
    store.upsert({ name, parent, device: 'box', home: `${home.dir}/w/${name}`, role_hash: roleHash(name), model: null, capabilities: ['fs.read'], template: 'lab' }, 'live');
  }
  const http = HttpConfigSchema.parse({ listen: '127.0.0.1:0' });
  srv = await startHttpServer({ runtime: rt, http, logger: silent }, [apiSurface()]);
  extra = await startHttpServer({ runtime: rt, http, logger: silent }, [apiSurface({ commands: TABLE })]);
  ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  for (const s of [srv, extra]) docs.set(s, await (await fetch(`${s.url}/v1/openapi.json`)).json() as Doc);
  ajv.addSchema({ $id: 'https://meshpilot.local/openapi', components: docs.get(srv)!.components });
}, 60_000);

afterAll(async () => {
  await srv?.close();
  await extra?.close();
  await rt?.close();
  delete process.env['MESHPILOT_HOME'];
  home?.cleanup();
});

describe('/v1/commands, derived from the declarations', () => {
  it('one route per declaration with the http surface: the OpenAPI paths, the mounted routes, an injected command', async () => {
    const want = httpNames(CLI_COMMANDS);
    // The server's table is the CLI's without up, reload, dashboard (an import cycle): none of those may be http.
    expect(httpNames(HTTP_COMMAND_TABLE)).toEqual(want);
    expect(want).toEqual(expect.arrayContaining(['devices', 'health', 'audit tail', 'audit verify', 'workspace ls', 'workspace rm', 'vm new', 'vm ls', 'vm image import']));
    expect(want).not.toContain('workspace import');
    expect(want).not.toContain('up');
    const paths = (d: Doc): string[] => Object.keys(d.paths).filter((p) => p.startsWith('/v1/commands/'));
    expect(paths(docs.get(srv)!)).toEqual(want.map((w) => `/v1/commands/${w.replace(/ /g, '/')}`));
    expect(apiRoutes().filter((r) => r.path.startsWith('/v1/commands/')).map((r) => r.path)).toEqual(paths(docs.get(srv)!));
    // Mounted: a token with no scope is refused (403) on each, not 404; a CLI-only command is no route.
    const none = token('none', ['*'], ['nothing.here']);
    for (const w of want) expect((await api(`/v1/commands/${w.replace(/ /g, '/')}`, none, {})).status, w).toBe(403);
    expect((await fetch(`${srv.url}/v1/commands/up`, { method: 'POST', headers: { authorization: `Bearer ${none}` } })).status).toBe(404);
    expect((await fetch(`${srv.url}/v1/commands/test/echo`, { method: 'POST', headers: { authorization: `Bearer ${none}` } })).status).toBe(404);
    // The injected table: its command is a route and in the document, with its schema as the body.
    expect(paths(docs.get(extra)!)).toEqual([...want, 'test echo'].map((w) => `/v1/commands/${w.replace(/ /g, '/')}`));
    const all = token('all', ['*'], ['*']);
    const echo = await api('/v1/commands/test/echo', all, { text: 'hi ', times: 3 }, extra);
    expect([echo.status, echo.json]).toEqual([200, { ok: true, exit_code: 0, stdout: 'hi hi hi ', stderr: '', truncated: false }]);
    const failed = await api('/v1/commands/test/echo', all, { text: 'x', fail: true }, extra);
    expect([failed.status, failed.json.ok, failed.json.exit_code]).toEqual([200, false, 1]);
    // Output is bounded: 2 MiB printed, 1 MiB answered, truncated.
    const big = await api('/v1/commands/test/echo', all, { text: 'ab', times: MAX_COMMAND_OUTPUT }, extra);
    expect([big.status, big.json.stdout.length, big.json.truncated]).toEqual([200, MAX_COMMAND_OUTPUT, true]);
  });

  it('the OpenAPI bodies are the declarations\' schemas', () => {
    const d = docs.get(srv)!;
    const rm = d.paths['/v1/commands/workspace/rm']!['post']!.requestBody!;
    expect(rm.required).toBe(true);
    expect(Object.keys(rm.content['application/json']!.schema.properties!).sort()).toEqual(['name', 'purge', 'yes']);
    expect(rm.content['application/json']!.schema.required).toEqual(['name']);
    const tail = d.paths['/v1/commands/audit/tail']!['post']!.requestBody!;
    expect(tail.required).toBe(false);
    expect(Object.keys(tail.content['application/json']!.schema.properties!).sort()).toEqual(['device', 'json', 'n']);
    const vmNew = d.paths['/v1/commands/vm/new']!['post']!.requestBody!.content['application/json']!.schema;
    expect(vmNew.required).toEqual(expect.arrayContaining(['device', 'name']));
    expect(Object.keys(vmNew.properties!)).toEqual(expect.arrayContaining(['device', 'name', 'image', 'cpus', 'yes', 'output']));
  });

  it('a body the schema refuses is 400 invalid_args naming the field; JSON numbers and strings are both taken', async () => {
    const all = token('val', ['*'], ['*']);
    const bad = async (url: string, body: unknown): Promise<string> => {
      const r = await api(url, all, body);
      expect([r.status, r.json.code]).toEqual([400, 'invalid_args']);
      return r.json.message as string;
    };
    expect(await bad('/v1/commands/audit/tail', { n: 0 })).toBe('n: -n must be a whole number from 1 to 100000');
    expect(await bad('/v1/commands/audit/tail', { n: 'lots' })).toMatch(/^n: /);
    expect(await bad('/v1/commands/audit/tail', { bogus: 1 })).toBe('bogus: not an argument of audit tail (its arguments: n, device, json)');
    expect(await bad('/v1/commands/devices', { json: 'maybe' })).toMatch(/^json: .*boolean/);
    expect(await bad('/v1/commands/vm/new', { device: 'box' })).toBe('name: required');
    expect(await bad('/v1/commands/workspace/rm', { name: 'Bad_Name' })).toMatch(/^name: a workspace name/);
    expect(await bad('/v1/commands/devices', '[1,2]')).toMatch(/JSON object/);
    expect(await bad('/v1/commands/devices', '{nope')).toMatch(/JSON object/);
    // "5" for a number (as the CLI's words), 5 for the vm verbs' string options: both pass the schema.
    const tail = await api('/v1/commands/audit/tail', all, { n: '5' });
    expect(tail.status).toBe(200);
    const vm = await api('/v1/commands/vm/new', all, { device: 'bare', name: 'dev', image: 'alpine', cpus: 2, ttl_h: '1' });
    expect(vm.status, JSON.stringify(vm.json)).toBe(403); // past validation: the manifest of bare has no vm.new
    expect(vm.json.stderr).toContain('vm.new');
  });

  it('the same text as the CLI: workspace ls, devices, vm ls denied by the manifest (with the token as actor)', async () => {
    const all = token('same', ['*'], ['*']);
    const ls = await cli('workspace', 'ls');
    expect(ls.code).toBe(0);
    expect(ls.out).toMatch(/lead[\s\S]*└─ helper/);
    const hls = await api('/v1/commands/workspace/ls', all);
    expect(hls.json).toEqual({ ok: true, exit_code: 0, stdout: ls.out, stderr: ls.err, truncated: false });
    const devices = await cli('devices');
    const hdev = await api('/v1/commands/devices', all, {});
    expect([hdev.status, hdev.json.stdout]).toEqual([200, devices.out]);
    expect(devices.out).toMatch(/^bare .*\nbox /);
    // vm ls on a device whose manifest does not enable it: the CLI's exit 3 is 403, the same lines.
    const vm = await cli('vm', 'ls', 'bare');
    expect(vm.code).toBe(3);
    const hvm = await api('/v1/commands/vm/ls', all, { device: 'bare' });
    expect([hvm.status, hvm.json.code, hvm.json.exit_code]).toEqual([403, 'forbidden', 3]);
    const seqless = (t: string): string => t.replace(/#\d+/g, '#N');
    expect(seqless(hvm.json.stderr)).toBe(seqless(vm.err));
    expect(hvm.json.message).toBe(vm.err.split('\n').find((l) => l.startsWith('error: '))!.slice('error: '.length));
    const entry = rt.audit.tail(1, 'bare')[0]!;
    expect(entry).toMatchObject({ actor: 'api:same', capability: 'vm.ls', decision: 'denied' });
    const verify = await cli('audit', 'verify', '--device', 'bare');
    const hverify = await api('/v1/commands/audit/verify', all, { device: 'bare' });
    expect([hverify.status, hverify.json.exit_code, hverify.json.stdout]).toEqual([200, verify.code, verify.out]);
    expect(verify.out).toMatch(/^bare: ok \d+ entries head=[0-9a-f]{64}/);
    // health runs a cycle over every device; a scoped token sees its own.
    const health = await api('/v1/commands/health', all);
    expect(health.status).toBe(200);
    expect(health.json.stdout.split('\n').filter(Boolean).map((l: string) => l.split(/\s+/)[0])).toEqual(['bare', 'box', 'local']);
    const hbox = await api('/v1/commands/health', token('health-box', ['box'], ['health']));
    expect(hbox.json.stdout.split('\n').filter(Boolean).map((l: string) => l.split(/\s+/)[0])).toEqual(['box']);
    // A token scoped to some devices sees those only.
    const lead = await api('/v1/commands/workspace/ls', token('lead-only', ['lead', 'box'], ['workspace.*', 'devices']));
    expect(lead.json.stdout).toContain('lead');
    expect(lead.json.stdout).not.toContain('helper');
    expect((await api('/v1/commands/devices', token('box-only', ['box'], ['devices']), {})).json.stdout).toMatch(/^box [^\n]*\n$/);
  });

  it('scope refusals are 403 and audited in _api: the command\'s scope, the device argument, a workspace out of scope', async () => {
    const narrow = token('narrow', ['bare'], ['sys.*', 'vm.ls', 'workspace.rm']);
    const cap = await api('/v1/commands/devices', narrow, {});
    expect([cap.status, cap.json.code]).toEqual([403, 'forbidden']);
    expect(cap.json.message).toBe('token narrow is not scoped for devices (meshpilot devices; its capabilities sys.*,vm.ls,workspace.rm)');
    expect(rt.audit.tail(1, '_api')[0]).toMatchObject({ actor: 'api:narrow', capability: 'api.command', decision: 'denied', args: { command: 'devices' }, reason: cap.json.message });
    const boxBefore = rt.audit.tail(1, 'box')[0]?.seq ?? 0;
    const dev = await api('/v1/commands/vm/ls', narrow, { device: 'box' });
    expect([dev.status, dev.json.message]).toEqual([403, 'token narrow is not scoped for device box (devices bare)']);
    expect(rt.audit.tail(1, '_api')[0]).toMatchObject({ actor: 'api:narrow', capability: 'api.command', args: { command: 'vm ls', device: 'box' } });
    expect(rt.audit.tail(1, 'box')[0]?.seq ?? 0).toBe(boxBefore); // nothing ran on box
    // workspace rm of a workspace whose descendant is out of the token's device scope: denied by the command (exit 3).
    const ws = await api('/v1/commands/workspace/rm', token('ws-lead', ['lead'], ['workspace.rm']), { name: 'lead', yes: true });
    expect([ws.status, ws.json.exit_code]).toEqual([403, 3]);
    expect(ws.json.message).toBe('may not remove helper, lead: helper not in the caller\'s device scope');
    expect(new WorkspaceStore(rt.db).list().map((r) => r.name).sort()).toEqual(['helper', 'lead']);
  });

  it('what would ask on a terminal does not hang: workspace rm says to add "yes": true; an approval goes to /v1/exec', async () => {
    const all = token('ask', ['*'], ['*']);
    const t0 = Date.now();
    const rm = await api('/v1/commands/workspace/rm', all, { name: 'lead' });
    expect([rm.status, rm.json.code, rm.json.exit_code]).toEqual([400, 'usage', 2]);
    expect(rm.json.message).toBe('removing lead (and helper) needs confirmation: run it in a terminal, or pass "yes": true');
    expect(new WorkspaceStore(rt.db).list()).toHaveLength(2);
    // vm.ls on box wants approval: `yes` does not approve an API call; refused at once, audited with the token as actor.
    const vm = await api('/v1/commands/vm/ls', all, { device: 'box', yes: true });
    expect([vm.status, vm.json.exit_code]).toEqual([403, 3]);
    expect(vm.json.message).toContain('needs an operator\'s approval: run it through POST /v1/exec');
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(rt.audit.tail(1, 'box')[0]).toMatchObject({ actor: 'api:ask', capability: 'vm.ls', decision: 'rejected' });
  });
});
