/**
 * GET /v1/openapi.json, generated from the same zod schemas the handlers validate with (schemas.ts):
 * zod 4's JSON Schema export (draft 2020-12, what OpenAPI 3.1 uses). Every route is listed here once,
 * with its request and its answers; test/api.test.ts validates every answer it gets against this. The
 * command routes (POST /v1/commands/…) are derived from the command declarations, their bodies from
 * each one's args schema (commands.ts), never written here.
 */
import { z } from 'zod';
import type { CliEntry } from '../../commands/context.js';
import { HTTP_COMMAND_TABLE } from '../../commands/http-table.js';
import { commandOpenApiRoutes } from './commands.js';
import * as S from './schemas.js';
import { WORKSPACE_ROUTES } from './workspace-routes.js';

interface Route {
  method: 'get' | 'post' | 'delete';
  path: string;
  summary: string;
  auth?: false;
  body?: z.ZodType;
  /** The body may be left out (a command whose arguments are all optional). */
  bodyOptional?: true;
  /** Query parameters (an object schema) or path parameters by name. */
  query?: z.ZodObject;
  params?: string[];
  responses: Record<number, { description: string; schema?: z.ZodType; sse?: true }>;
}

const E = (description: string) => ({ description, schema: S.HttpErrorSchema });
const COMMON = { 401: E('no token, or a malformed, unknown, revoked or expired one'), 429: E('rate limited (Retry-After says when to retry)') };

/** The hand-written routes; the command routes are derived from the declarations (commands.ts). */
const STATIC_ROUTES: Route[] = [
  { method: 'get', path: '/v1/health', summary: 'the server answers', auth: false, responses: { 200: { description: 'ok', schema: S.HealthSchema } } },
  { method: 'get', path: '/v1/openapi.json', summary: 'this document', auth: false, responses: { 200: { description: 'OpenAPI 3.1' } } },
  {
    method: 'post', path: '/v1/exec', summary: 'run a capability on a device through invoke (actor api:<token name>)', body: S.ExecRequestSchema,
    responses: {
      200: { description: 'it ran (ok or not): the result and its audit entry', schema: S.ExecResultSchema },
      202: { description: 'it needs an operator\'s approval: poll the approval', schema: S.ExecAcceptedSchema },
      400: { description: 'bad body (Error), or the capability\'s arguments failed their schema (ExecRefusal, audited)', schema: S.ExecErrorSchema },
      403: { description: 'outside the token\'s scopes (Error, audited in _api), or denied by the manifest or not approved (ExecRefusal)', schema: S.ExecErrorSchema },
      404: { description: 'unknown device or capability (ExecRefusal)', schema: S.ExecErrorSchema },
      413: E('body too large'), ...COMMON,
    },
  },
  {
    method: 'get', path: '/v1/approvals/{id}', summary: 'an API call waiting for (or past) approval; ?wait=<s> waits for the verdict', params: ['id'], query: S.ApprovalQuerySchema,
    responses: { 200: { description: 'the approval, with the result once the call finished', schema: S.ApprovalSchema }, 404: E('no such approval for this token'), ...COMMON },
  },
  { method: 'get', path: '/v1/devices', summary: 'the devices in the token\'s scope', responses: { 200: { description: 'devices', schema: S.DeviceListSchema }, ...COMMON } },
  {
    method: 'get', path: '/v1/devices/{device}', summary: 'a device: manifest summary, health, bot state, audit head', params: ['device'],
    responses: { 200: { description: 'the device', schema: S.DeviceDetailSchema }, 404: E('unknown device'), ...COMMON },
  },
  {
    method: 'post', path: '/v1/devices', summary: 'add a device (add-pc); progress as server-sent events: start, step-start and step (one per step, when finished), undo, info, warn, then result', body: S.AddDeviceRequestSchema,
    responses: { 200: { description: 'text/event-stream of enrollment events', sse: true }, 400: E('bad body'), 403: E('not in the token\'s scopes (needs fleet.add-pc)'), ...COMMON },
  },
  {
    method: 'delete', path: '/v1/devices/{device}', summary: 'revoke a device; ?confirm=<device> must repeat its name', params: ['device'], query: S.RevokeQuerySchema,
    responses: { 200: { description: 'revoked (or there was nothing to revoke)', schema: S.RevokeResultSchema }, 400: E('confirm missing or different, or revoke cannot run (no config)'), 403: E('not in the token\'s scopes (needs fleet.revoke)'), 500: E('revoke failed or is incomplete (the message says what is left)'), ...COMMON },
  },
  {
    method: 'get', path: '/v1/audit', summary: 'a device\'s audit entries after a seq', query: S.AuditQuerySchema,
    responses: { 200: { description: 'a page of entries', schema: S.AuditPageSchema }, 400: E('bad query'), 403: E('device not in scope'), ...COMMON },
  },
  { method: 'get', path: '/v1/audit/verify', summary: 'verify the chains in scope and compare them with their Matrix anchors', responses: { 200: { description: 'per chain', schema: S.AuditVerifySchema }, ...COMMON } },
  ...WORKSPACE_ROUTES(E, COMMON),
];

/** Every route of a server whose command table is `commands`. */
export function apiRoutes(commands: readonly CliEntry[] = HTTP_COMMAND_TABLE): Route[] {
  return [...STATIC_ROUTES, ...commandOpenApiRoutes(commands, E, COMMON)];
}

/** Every route of the server with the CLI's command table. */
export const ROUTES: Route[] = apiRoutes();

type Json = Record<string, unknown>;

function strip(s: Json): Json {
  const { $schema: _s, $id: _i, ...rest } = s;
  return rest;
}

/** Answers refer to the components; request bodies are inlined as their input form (defaults make fields optional). */
const ref = (schema: z.ZodType, io: 'input' | 'output'): Json => {
  const id = z.globalRegistry.get(schema)?.id;
  if (id && io === 'output') return { $ref: `#/components/schemas/${id}` };
  return strip(z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Json);
};

const cached = new WeakMap<readonly CliEntry[], Json>();

export function openApiDocument(commands: readonly CliEntry[] = HTTP_COMMAND_TABLE): Json {
  const hit = cached.get(commands);
  if (hit) return hit;
  const all = z.toJSONSchema(z.globalRegistry, { uri: (id) => `#/components/schemas/${id}`, unrepresentable: 'any' }) as { schemas: Record<string, Json> };
  const components: Record<string, Json> = {};
  for (const [id, s] of Object.entries(all.schemas)) components[id] = strip(s);
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of commands === HTTP_COMMAND_TABLE ? ROUTES : apiRoutes(commands)) {
    const op: Json = { summary: r.summary, operationId: `${r.method}${r.path.replace(/[^A-Za-z0-9]+(.)?/g, (_m, ch: string | undefined) => (ch ? ch.toUpperCase() : ''))}` };
    const parameters: Json[] = [];
    for (const name of r.params ?? []) parameters.push({ name, in: 'path', required: true, schema: { type: 'string' } });
    if (r.query) {
      const q = z.toJSONSchema(r.query, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, Json>; required?: string[] };
      for (const [name, schema] of Object.entries(q.properties ?? {})) parameters.push({ name, in: 'query', required: (q.required ?? []).includes(name), schema });
    }
    if (parameters.length) op['parameters'] = parameters;
    if (r.body) op['requestBody'] = { required: r.bodyOptional !== true, content: { 'application/json': { schema: ref(r.body, 'input') } } };
    op['responses'] = Object.fromEntries(Object.entries(r.responses).map(([status, d]) => [status, {
      description: d.description,
      ...(d.schema ? { content: { 'application/json': { schema: ref(d.schema, 'output') } } } : d.sse ? { content: { 'text/event-stream': { schema: { type: 'string' } } } } : {}),
    }]));
    if (r.auth !== false) op['security'] = [{ bearer: [] }];
    (paths[r.path] ??= {})[r.method] = op;
  }
  const doc: Json = {
    openapi: '3.1.0',
    info: { title: 'meshpilot HTTP API', version: '1', description: 'Run capabilities on your devices through the one invoke path, with scoped tokens (`meshpilot token create`).' },
    servers: [{ url: '/' }],
    components: { schemas: components, securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'mp_… token from `meshpilot token create`' } } },
    paths,
  };
  cached.set(commands, doc);
  return doc;
}
