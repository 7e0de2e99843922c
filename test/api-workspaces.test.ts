/**
 * Workspaces over the /v1 API, over real HTTP, a real SQLite home and the Matrix test homeserver (the
 * real Synapse when MESHPILOT_TEST_HOMESERVER is set: each created workspace gets its bot account):
 * the plan of a dry run (nothing written), template problems as `file:line path: message` (400),
 * `!include` refused, scopes (403), the import applied (rows, manifests, role files, audit with the
 * token as actor), the tree, rm asking for its name back with the descendants named, then removing
 * children first. Every JSON answer is validated against GET /v1/openapi.json.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigSchema, HttpConfigSchema, type Config } from '../capabilities/config.js';
import { WorkspaceStore } from '../capabilities/workspace/store.js';
import { apiSurface } from '../launcher/http/api/index.js';
import { ROUTES } from '../launcher/http/api/openapi.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { TokenStore } from '../launcher/http/tokens.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { CONTROLLER_CHAIN } from '../launcher/workspaces/index.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

let hs: TestHomeserver;
let rt: Runtime;
let root: string;
let srv: RunningHttpServer;
let config: Config;
let validate: (method: string, url: string, status: number, body: unknown) => void;
const suffix = randomBytes(3).toString('hex');

interface Answer { status: number; json: any } // eslint-disable-line @typescript-eslint/no-explicit-any -- answers are checked against the OpenAPI schema

async function api(method: string, url: string, token: string, body?: unknown): Promise<Answer> {
  const res = await fetch(`${srv.url}${url}`, {
    method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const json = (await res.json()) as unknown;
  validate(method, url, res.status, json);
  return { status: res.status, json };
}

function token(name: string, devices: string[], capabilities: string[]): string {
  return new TokenStore(rt.db, rt.audit).create({ name, devices, capabilities, expiresInS: 3600, rate: { count: 1000, windowS: 60 }, by: 'test' }).token;
}

const TEMPLATE = (): string => `name: lab-${suffix}
defaults: { device: server, capabilities: [fs.read] }
workspaces:
  - name: lead
    role: Leads the lab.
    home: ${root}/w/lead
    children:
      - { name: helper, role: Helps., home: ${root}/w/helper }
      - { name: later, role: Later., home: ${root}/w/later, spawning: false }
`;

beforeAll(async () => {
  hs = await startTestHomeserver();
  root = tempDir('mp-api-ws-');
  rt = openRuntime({ root: path.join(root, 'home') });
  writeFileSync(path.join(rt.home.manifests, 'server.yaml'), [
    'device: server', 'os: linux', 'transport: { kind: local }', 'capabilities:',
    ...['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ["${root}/w/**"] }`), '',
  ].join('\n'));
  config = ConfigSchema.parse({
    matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret, operator_bot: hs.unique(`mp-apiws-${suffix}`), bot_prefix: `${hs.unique(`mpa${suffix}`)}-` },
    operators: ['@op:example.org'],
  });
  srv = await startHttpServer({ runtime: rt, config, http: HttpConfigSchema.parse({ listen: '127.0.0.1:0' }), logger: pino({ level: 'silent' }) }, [apiSurface()]);
  const doc = await (await fetch(`${srv.url}/v1/openapi.json`)).json() as { components: { schemas: Record<string, unknown> }; paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }> }>> };
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  ajv.addSchema({ $id: 'https://meshpilot.local/openapi', components: doc.components });
  let n = 0;
  validate = (method, url, status, body) => {
    const pathname = url.split('?')[0]!;
    const route = ROUTES.find((r) => r.method === method.toLowerCase() && new RegExp(`^${r.path.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(pathname) && !(r.path.endsWith('{name}') && pathname.endsWith('/import')));
    expect(route, `${method} ${pathname} is in the OpenAPI document`).toBeDefined();
    const schema = doc.paths[route!.path]![route!.method]!.responses[String(status)]?.content?.['application/json']?.schema;
    expect(schema?.$ref, `${method} ${pathname} ${status} is a documented JSON answer`).toBeDefined();
    const v = ajv.compile({ $id: `https://meshpilot.local/openapi/ws/${n++}`, allOf: [{ $ref: `https://meshpilot.local/openapi${schema!.$ref}` }] });
    expect(v(body), `${method} ${pathname} ${status}: ${JSON.stringify(v.errors)}\n${JSON.stringify(body).slice(0, 500)}`).toBe(true);
  };
}, 60_000);

afterAll(async () => {
  await srv?.close();
  await rt?.close();
  await hs?.stop();
});

describe('/v1/workspaces', () => {
  it('the OpenAPI document lists the routes with their request body', async () => {
    type Obj = { properties: Record<string, unknown>; required?: string[] };
    const doc = await (await fetch(`${srv.url}/v1/openapi.json`)).json() as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { $defs: Record<string, Obj> } }> } }>> };
    expect(Object.keys(doc.paths['/v1/workspaces/{name}']!).sort()).toEqual(['delete', 'get']);
    const body = doc.paths['/v1/workspaces/import']!['post']!.requestBody!.content['application/json']!.schema.$defs['WorkspaceImportRequest']!;
    expect(Object.keys(body.properties).sort()).toEqual(['dry_run', 'filename', 'mode', 'yaml']);
    expect(body.required).toEqual(['yaml']);
  });

  it('dry run, problems, !include, scopes; the import applied; the tree; rm asks for the name, then removes children first', async () => {
    const all = token(`all-${suffix}`, ['*'], ['*']);
    // A dry run: the plan, nothing written.
    const dry = await api('POST', '/v1/workspaces/import', all, { yaml: TEMPLATE(), dry_run: true });
    expect(dry.status).toBe(200);
    expect(dry.json.plan).toMatchObject({ template: `lab-${suffix}`, mode: 'merge', create: ['lead', 'helper'], skipped: ['later'], remove: [], noop: false });
    expect(dry.json.plan.text).toMatch(/^org lab-\w+ \(merge\): 2 create, 0 update, 0 unchanged, 1 skipped, 0 remove/);
    expect(dry.json.result).toMatchObject({ ok: true, status: 'dry run', import_id: null });
    const store = new WorkspaceStore(rt.db);
    expect(store.list()).toEqual([]);

    // Problems: every one as file:line path: message, under the given file name.
    const bad = await api('POST', '/v1/workspaces/import', all, { yaml: 'name: bad\nworkspaces:\n  - name: ok-one\n    role: R.\n    device: nowhere\n  - name: Bad_Name\n', filename: 'team.yaml' });
    expect(bad.status).toBe(400);
    expect(bad.json.code).toBe('manifest_invalid');
    expect(bad.json.issues).toContainEqual(expect.stringMatching(/^team\.yaml:6 workspaces\[1\]\.name: /));
    const inc = await api('POST', '/v1/workspaces/import', all, { yaml: 'name: inc\nworkspaces:\n  - !include a.yaml\n' });
    expect(inc.status).toBe(400);
    expect(inc.json.message).toContain('uses !include (line 3)');
    const bodyBad = await api('POST', '/v1/workspaces/import', all, { yaml: TEMPLATE(), mode: 'sideways' });
    expect(bodyBad.status).toBe(400);
    expect(bodyBad.json.code).toBe('usage');

    // Scopes: the capability, and every name (and host device) touched.
    const noCap = await api('POST', '/v1/workspaces/import', token(`nocap-${suffix}`, ['*'], ['fs.*']), { yaml: TEMPLATE(), dry_run: true });
    expect([noCap.status, noCap.json.code]).toEqual([403, 'forbidden']);
    const narrow = await api('POST', '/v1/workspaces/import', token(`narrow-${suffix}`, ['lead', 'server'], ['workspace.*']), { yaml: TEMPLATE() });
    expect(narrow.status).toBe(403);
    expect(narrow.json.message).toContain('helper');
    expect(store.list()).toEqual([]);

    // Applied: both created (accounts, manifests, role files), the skipped one counted.
    const done = await api('POST', '/v1/workspaces/import', all, { yaml: TEMPLATE() });
    expect(done.status).toBe(200);
    expect(done.json.result).toMatchObject({ ok: true, status: 'done', counts: { created: 2, updated: 0, skipped: 1, removed: 0, failed: 0 } });
    expect(done.json.result.import_id).toMatch(/\S{8,}/);
    for (const n of ['lead', 'helper']) {
      expect(existsSync(path.join(rt.home.manifests, `${n}.yaml`))).toBe(true);
      expect(existsSync(path.join(rt.home.keys, n, 'matrix.json'))).toBe(true);
    }
    expect(readFileSync(path.join(root, 'w', 'helper', 'ROLE.md'), 'utf8')).toContain('Helps.');
    const runs = rt.audit.tail(20, CONTROLLER_CHAIN).filter((e) => e.capability === 'workspace.import');
    expect(runs.map((e) => [(e.args as { event: string }).event, e.actor])).toEqual([['started', `api:all-${suffix}`], ['completed', `api:all-${suffix}`]]);
    // Again: nothing to do.
    const again = await api('POST', '/v1/workspaces/import', all, { yaml: TEMPLATE() });
    expect(again.json.result.status).toBe('nothing to do');
    expect(again.json.plan.unchanged).toEqual(['lead', 'helper']);

    // The tree, and what a token sees of it.
    const ls = await api('GET', '/v1/workspaces', all);
    expect(ls.json.count).toBe(2);
    expect(ls.json.workspaces.map((w: { name: string }) => w.name)).toEqual(['lead']);
    expect(ls.json.workspaces[0].children).toMatchObject([{ name: 'helper', parent: 'lead', device: 'server', home: `${root}/w/helper`, template: `lab-${suffix}`, children: [] }]);
    expect(ls.json.text).toMatch(/└─ helper {2}\w+ {2}on server/);
    // The same tree as the `workspace ls` declaration prints over POST /v1/commands/workspace/ls (and the CLI).
    const cmdLs = await api('POST', '/v1/commands/workspace/ls', all, {});
    expect([cmdLs.status, cmdLs.json.stdout]).toEqual([200, `${ls.json.text}\n`]);
    const onlyLead = await api('GET', '/v1/workspaces', token(`lead-${suffix}`, ['lead'], ['*']));
    expect(onlyLead.json.count).toBe(1);
    expect(onlyLead.json.workspaces[0].children).toEqual([]);
    const one = await api('GET', '/v1/workspaces/lead', all);
    expect(one.json.removal_order).toEqual(['helper', 'lead']);
    expect((await api('GET', '/v1/workspaces/nope', all)).status).toBe(404);

    // rm: the name repeated, descendants named; a token without every name may not; then children first.
    const ask = await api('DELETE', '/v1/workspaces/lead', all);
    expect(ask.status).toBe(400);
    expect(ask.json.message).toBe('removing lead also removes its 1 descendant (helper), first: repeat its name, ?confirm=lead');
    const partial = await api('DELETE', '/v1/workspaces/lead?confirm=lead', token(`rm-lead-${suffix}`, ['lead'], ['workspace.rm']));
    expect(partial.status).toBe(403);
    expect(store.list().map((r) => r.name).sort()).toEqual(['helper', 'lead']);
    const rm = await api('DELETE', '/v1/workspaces/lead?confirm=lead', all);
    expect(rm.status).toBe(200);
    // DELETE runs the `workspace rm` declaration (--yes once confirmed): its last line is the message.
    expect(rm.json).toEqual({ ok: true, removed: ['helper', 'lead'], message: 'removed 2 workspaces: helper, lead' });
    expect(store.list()).toEqual([]);
    expect(existsSync(path.join(rt.home.manifests, 'lead.yaml'))).toBe(false);
    // The home stays (no purge).
    expect(existsSync(path.join(root, 'w', 'lead', 'ROLE.md'))).toBe(true);
  }, 120_000);
});
