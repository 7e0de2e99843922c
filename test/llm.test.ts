import { promises as fsp } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConversationStore, exchangeProblem } from '../bots/conversation.js';
import {
  auditFooter, buildSystemPrompt, buildTools, createLlmClient, isToolMappable, runTurn, serializeResult, toCapabilityName, toToolName,
  MAX_TOOL_RESULT_BYTES, type LlmClient, type LlmClientOptions, type MessageParam,
} from '../bots/llm.js';
import { DEFAULT_LLM_MODEL } from '../capabilities/llm-model.js';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { MeshpilotError } from '../capabilities/errors.js';
import { Invoker, type InvokeResult } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { builtinRegistry } from '../capabilities/registry.js';
import {
  errorReply, startAnthropicFixture, textReply, toolReply, type AnthropicFixture, type RecordedRequest,
} from './fixtures/anthropic.js';

const API_KEY = 'sk-ant-test-0123456789';
const DEVICE = 'testdev';
const ACTOR = 'llm:@op:example.org';

let tmp: string;
let dataDir: string;
let outsideDir: string;
let dbFile: string;
let db: Db;
let audit: SqliteAuditLog;
let manifest: Manifest;
let invoker: Invoker;
let fixture: AnthropicFixture;

const invoke = (capability: string, args: unknown): Promise<InvokeResult> =>
  invoker.invoke({ device: DEVICE, capability, args, actor: ACTOR });

function client(extra: Partial<LlmClientOptions> = {}): LlmClient {
  return createLlmClient({ apiKey: API_KEY, baseURL: fixture.url, model: 'claude-test-1', maxTokens: 1024, timeoutMs: 5000, retryBaseMs: 5, ...extra });
}

function tools() {
  return buildTools(invoker.allowedCapabilities(DEVICE));
}

function system(): string {
  return buildSystemPrompt({ ...manifest, operatorPrompt: 'Answer in English.' });
}

interface Body {
  model: string;
  max_tokens: number;
  system: Array<{ type: string; text: string; cache_control?: unknown }>;
  tools: Array<{ name: string; cache_control?: unknown; input_schema: Record<string, unknown> }>;
  messages: MessageParam[];
}
const body = (r: RecordedRequest): Body => r.body as Body;

function toolResults(m: MessageParam): Array<{ tool_use_id: string; content: string; is_error?: boolean }> {
  if (typeof m.content === 'string') return [];
  return m.content.filter((b) => b.type === 'tool_result') as unknown as Array<{ tool_use_id: string; content: string; is_error?: boolean }>;
}

beforeAll(async () => {
  tmp = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'mp-llm-')));
  dataDir = path.join(tmp, 'data');
  outsideDir = path.join(tmp, 'outside');
  await fsp.mkdir(path.join(dataDir, 'sub'), { recursive: true });
  await fsp.mkdir(outsideDir);
  await fsp.writeFile(path.join(dataDir, 'alpha.txt'), 'hello\n');
  await fsp.writeFile(path.join(dataDir, 'beta.log'), 'x'.repeat(2048));
  await fsp.writeFile(path.join(outsideDir, 'secret.txt'), 'nope');
  const big = path.join(dataDir, 'big');
  await fsp.mkdir(big);
  for (let i = 0; i < 400; i++) await fsp.writeFile(path.join(big, `file-${String(i).padStart(4, '0')}-${'n'.repeat(60)}.txt`), '');
  await fsp.mkdir(path.join(tmp, 'home'));
  dbFile = path.join(tmp, 'home', 'meshpilot.db');
  db = openDatabase(dbFile);
  audit = new SqliteAuditLog(db);
  const yaml = [
    `device: ${DEVICE}`,
    'os: linux',
    'transport: { kind: local }',
    'capabilities:',
    '  fs.list:',
    `    paths_allowed: ["${dataDir}/**"]`,
    '',
  ].join('\n');
  const parsed = parseManifest(yaml, 'testdev.yaml');
  if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
  manifest = parsed.manifest;
  invoker = new Invoker({ manifests: { get: (d) => (d === DEVICE ? manifest : undefined) }, audit });
});

afterAll(async () => {
  await invoker?.close();
  db?.close();
  if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
});

beforeEach(async () => {
  fixture = await startAnthropicFixture({ apiKey: API_KEY });
});
afterEach(async () => {
  await fixture.close();
});

describe('tool loop against the fixture with the real SDK and Invoker', () => {
  it('runs fs.list, sends the real listing back, answers, and names the audit entry', async () => {
    fixture.enqueue(
      toolReply([{ name: 'fs_list', input: { path: dataDir }, id: 'toolu_01listAAAA' }], 'Let me look.'),
      textReply('There are alpha.txt, beta.log, big/ and sub/.'),
    );
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'what is in data?', invoke });

    expect(r.stoppedBy).toBe('end_turn');
    expect(r.text).toBe('There are alpha.txt, beta.log, big/ and sub/.');
    expect(fixture.requests).toHaveLength(2);
    expect(fixture.accepted).toHaveLength(2);

    // Headers and request shape.
    const [first, second] = fixture.requests as [RecordedRequest, RecordedRequest];
    // SDK 1.x sends the key as `authorization: Bearer`; the fixture accepts that or x-api-key.
    expect(first.apiKey).toBe(API_KEY);
    expect(first.headers['x-api-key'] ?? first.headers['authorization']).toContain(API_KEY);
    expect(first.headers['anthropic-version']).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(body(first).model).toBe('claude-test-1');
    expect(body(first).max_tokens).toBe(1024);
    expect(body(first).tools.map((t) => t.name)).toEqual(['fs_list']);
    expect(body(first).messages).toEqual([{ role: 'user', content: [{ type: 'text', text: 'what is in data?', cache_control: { type: 'ephemeral' } }] }]);

    // The tool_result carries the real listing from the Invoker.
    const sentBack = body(second).messages;
    expect(sentBack.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    const results = toolResults(sentBack[2]!);
    expect(results).toHaveLength(1);
    expect(results[0]!.tool_use_id).toBe('toolu_01listAAAA');
    expect(results[0]!.is_error).toBeUndefined();
    expect(results[0]!.content).toMatch(/alpha\.txt/);
    expect(results[0]!.content).toMatch(/sub\//);
    expect(results[0]!.content).not.toMatch(/secret/);

    // Actions name a real audit entry.
    expect(r.actions).toHaveLength(1);
    const a = r.actions[0]!;
    expect(a).toMatchObject({ capability: 'fs.list', ok: true });
    expect(a.auditSeq).toEqual(expect.any(Number));
    const entry = audit.get(DEVICE, a.auditSeq!);
    expect(entry).toMatchObject({ capability: 'fs.list', outcome: 'ok', actor: ACTOR, decision: 'allowed' });
    expect(audit.verify(DEVICE).ok).toBe(true);
    expect(auditFooter(r.actions)).toBe(`🧾 #${a.auditSeq} fs.list ok`);

    // The exchange is whole and usage was counted.
    expect(r.messages).toHaveLength(4);
    expect(exchangeProblem(r.messages)).toBeNull();
    expect(JSON.stringify(r.messages)).not.toContain('cache_control'); // breakpoints are per request only
    expect(r.usage.input).toBeGreaterThan(0);
    expect(r.usage.output).toBeGreaterThan(0);
    expect(r.steps).toBe(2);
  });

  it('puts cache_control on the system block, the last tool and the last message only', async () => {
    fixture.enqueue(textReply('hi'));
    const allTools = buildTools(builtinRegistry().all());
    await runTurn({ client: client(), system: system(), tools: allTools, history: [], userText: 'hi', invoke });
    const b = body(fixture.requests[0]!);
    expect(b.system).toHaveLength(1);
    expect(b.system[0]!.cache_control).toEqual({ type: 'ephemeral' });
    expect(b.system[0]!.text).toBe(system());
    expect(b.tools.length).toBeGreaterThan(5);
    expect(b.tools.at(-1)!.cache_control).toEqual({ type: 'ephemeral' });
    expect(b.tools.slice(0, -1).every((t) => t.cache_control === undefined)).toBe(true);
    // The stored history must not carry the per-request breakpoint.
    expect(JSON.stringify(allTools.slice(0, -1))).not.toContain('cache_control');
  });

  it('returns denied calls to the model as is_error, each with its audit entry', async () => {
    fixture.enqueue(
      toolReply([
        { name: 'fs_list', input: { path: outsideDir }, id: 'toolu_01deny1' },
        { name: 'fs_read', input: { path: path.join(outsideDir, 'secret.txt') }, id: 'toolu_01deny2' },
        { name: 'fs_list', input: { path: 42 }, id: 'toolu_01deny3' },
      ]),
      textReply('I am not allowed to look there.'),
    );
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'show outside', invoke });
    expect(r.stoppedBy).toBe('end_turn');
    const results = toolResults(body(fixture.requests[1]!).messages.at(-1)!);
    expect(results.map((x) => x.tool_use_id)).toEqual(['toolu_01deny1', 'toolu_01deny2', 'toolu_01deny3']);
    expect(results.every((x) => x.is_error === true)).toBe(true);
    expect(results[0]!.content).toMatch(/^policy_denied: /);
    expect(results[1]!.content).toMatch(/fs\.read is not enabled/);
    expect(results[2]!.content).toMatch(/^invalid_args: /);
    expect(results[0]!.content).not.toContain('nope');

    expect(r.actions.map((x) => [x.capability, x.ok, x.errorCode])).toEqual([
      ['fs.list', false, 'policy_denied'], ['fs.read', false, 'policy_denied'], ['fs.list', false, 'invalid_args'],
    ]);
    for (const x of r.actions) {
      const e = audit.get(DEVICE, x.auditSeq!);
      expect(e?.decision).toBe('denied');
      expect(e?.outcome).toBe('not_run');
    }
    const [d1, d2, d3] = r.actions.map((x) => x.auditSeq);
    expect(auditFooter(r.actions)).toBe(`🧾 #${d1} fs.list denied · #${d2} fs.read denied · #${d3} fs.list invalid args`);
  });

  it('caps a large tool result at 16 KiB with a truncation note', async () => {
    fixture.enqueue(toolReply([{ name: 'fs_list', input: { path: path.join(dataDir, 'big') } }]), textReply('many files'));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'list big', invoke });
    expect(r.actions[0]!.ok).toBe(true);
    const content = toolResults(body(fixture.requests[1]!).messages.at(-1)!)[0]!.content;
    expect(Buffer.byteLength(content)).toBeLessThanOrEqual(MAX_TOOL_RESULT_BYTES);
    expect(Buffer.byteLength(content)).toBeGreaterThan(MAX_TOOL_RESULT_BYTES - 200);
    expect(content).toMatch(/\[… truncated: \d+ more bytes not shown/);
    expect(content).toContain('file-0000-');
  });

  it('stops at the step limit with a note and a well-formed history', async () => {
    fixture.respond(() => toolReply([{ name: 'fs_list', input: { path: dataDir } }], 'Checking again.'));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'loop', invoke, maxSteps: 3 });
    expect(r.stoppedBy).toBe('max_steps');
    expect(fixture.requests).toHaveLength(3);
    expect(r.steps).toBe(3);
    expect(r.actions).toHaveLength(3);
    expect(r.actions.every((a) => a.ok && a.auditSeq !== null)).toBe(true);
    expect(r.text).toMatch(/step limit/);
    expect(r.text).toContain('!help');
    expect(exchangeProblem(r.messages)).toBeNull();
    // The stopped exchange can be sent again as history: the fixture validates it like the API.
    fixture.respond(null);
    fixture.enqueue(textReply('continuing'));
    const next = await runTurn({ client: client(), system: system(), tools: tools(), history: r.messages, userText: 'go on', invoke });
    expect(next.stoppedBy).toBe('end_turn');
    expect(fixture.requests.at(-1)!.valid).toBe(true);
  });
});

describe('retries and failures', () => {
  it('retries a 529 overloaded_error and succeeds', async () => {
    fixture.enqueue(errorReply(529), textReply('fine now'));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(r.stoppedBy).toBe('end_turn');
    expect(r.text).toBe('fine now');
    expect(fixture.requests.map((q) => q.status)).toEqual([529, 200]);
  });

  it('honours retry-after but never waits longer than maxRetryDelayMs', async () => {
    fixture.enqueue(errorReply(429, { retryAfter: 30 }), textReply('after the wait'));
    const t0 = Date.now();
    const r = await runTurn({ client: client({ maxRetryDelayMs: 200 }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    const elapsed = Date.now() - t0;
    expect(r.text).toBe('after the wait');
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(5000);
    expect(fixture.requests.map((q) => q.status)).toEqual([429, 200]);
  });

  it('gives up after the bounded retries with an unreachable error pointing to command mode', async () => {
    fixture.respond(() => errorReply(529));
    const r = await runTurn({ client: client({ maxRetries: 2 }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests).toHaveLength(3);
    expect(r.stoppedBy).toBe('error');
    expect(r.error?.code).toBe('unreachable');
    expect(r.text).toMatch(/overloaded/);
    expect(r.text).toContain('!help');
    expect(r.text).toMatch(/[Cc]ommand mode/);
    expect(r.messages).toEqual([]);
  });

  it('reports a connection failure as unreachable', async () => {
    const srv = createServer();
    await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
    const port = (srv.address() as AddressInfo).port;
    await new Promise<void>((res) => srv.close(() => res()));
    const c = createLlmClient({ apiKey: API_KEY, baseURL: `http://127.0.0.1:${port}`, model: 'm', maxTokens: 64, timeoutMs: 2000, maxRetries: 1, retryBaseMs: 5 });
    const err = await c.createMessage({ system: [], tools: [], messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MeshpilotError);
    expect((err as MeshpilotError).code).toBe('unreachable');
    expect((err as MeshpilotError).message).toMatch(/cannot be reached after 2 attempts/);
    expect((err as MeshpilotError).message).toContain('!help');
  });

  it('times out a hanging API per attempt and says so', async () => {
    fixture.respond(() => ({ ...textReply('too late'), delayMs: 3000 }));
    const t0 = Date.now();
    const r = await runTurn({ client: client({ timeoutMs: 150, maxRetries: 1 }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(fixture.requests).toHaveLength(2);
    expect(r.error?.code).toBe('unreachable');
    expect(r.text).toMatch(/timed out after 2 attempts/);
    expect(r.text).toContain('!help');
  });

  it('honours ANTHROPIC_BASE_URL when no baseURL is given', async () => {
    const saved = process.env['ANTHROPIC_BASE_URL'];
    process.env['ANTHROPIC_BASE_URL'] = fixture.url;
    try {
      fixture.enqueue(textReply('via env'));
      const c = createLlmClient({ apiKey: API_KEY, model: 'm', maxTokens: 64, timeoutMs: 2000 });
      const msg = await c.createMessage({ system: [], tools: [], messages: [{ role: 'user', content: 'hi' }] });
      expect(msg.content[0]).toMatchObject({ type: 'text', text: 'via env' });
      expect(fixture.requests).toHaveLength(1);
    } finally {
      if (saved === undefined) delete process.env['ANTHROPIC_BASE_URL'];
      else process.env['ANTHROPIC_BASE_URL'] = saved;
    }
  });

  it('retries a dropped connection', async () => {
    fixture.enqueue({ kind: 'disconnect' }, textReply('back'));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(r.text).toBe('back');
    expect(fixture.requests).toHaveLength(2);
  });

  it('does not retry a 400 and says the request was refused', async () => {
    fixture.enqueue(errorReply(400, { message: 'prompt is too long' }));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests).toHaveLength(1);
    expect(r.stoppedBy).toBe('error');
    expect(r.error?.code).toBe('internal');
    expect(r.text).toMatch(/prompt is too long/);
    expect(r.text).toContain('!help');
  });

  it('a wrong API key is an auth error, not retried', async () => {
    fixture.enqueue(textReply('never'));
    const r = await runTurn({ client: client({ apiKey: 'sk-wrong' }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests).toHaveLength(1);
    expect(fixture.requests[0]!.status).toBe(401);
    expect(r.error?.code).toBe('auth');
    expect(r.text).not.toContain('sk-wrong');
  });
});

describe('API refusals that a config change fixes: one plain line naming the key', () => {
  /** One line, no JSON body, no stack frame, the command-mode hint kept. */
  function expectPlainLine(text: string): void {
    expect(text.split('\n')).toHaveLength(1);
    expect(text).not.toMatch(/\{"type"|\n\s+at |Error:/);
    expect(text).toContain('!help');
  }

  it('a retired model (the real API: 404 not_found_error) names llm.model and a current model', async () => {
    const r = await runTurn({ client: client({ model: 'claude-sonnet-4-5', stream: true }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests).toHaveLength(1); // not retried
    expect(fixture.requests[0]!.status).toBe(404);
    expect(r.stoppedBy).toBe('error');
    expect(r.error?.code).toBe('config');
    expect(r.text).toContain('`llm.model` in config.yaml');
    expect(r.text).toContain('"claude-sonnet-4-5"');
    expect(r.text).toContain(DEFAULT_LLM_MODEL);
    expectPlainLine(r.text);
  });

  it('an unknown model name says the same (non-streaming call)', async () => {
    await fixture.close();
    fixture = await startAnthropicFixture({ apiKey: API_KEY, strictModels: true });
    const r = await runTurn({ client: client({ model: 'claude-sonet-5-5' }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests[0]!.status).toBe(404);
    expect(r.error?.code).toBe('config');
    expect(r.text).toContain('`llm.model` in config.yaml');
    expect(r.text).toContain('"claude-sonet-5-5"');
    expectPlainLine(r.text);
  });

  it('401 names llm.api_key and ANTHROPIC_API_KEY, and never the key', async () => {
    const r = await runTurn({ client: client({ apiKey: 'sk-ant-wrong-key-42' }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests[0]!.status).toBe(401);
    expect(r.error?.code).toBe('auth');
    expect(r.text).toContain('`llm.api_key` in config.yaml (or ANTHROPIC_API_KEY)');
    expect(r.text).not.toContain('sk-ant-wrong-key-42');
    expectPlainLine(r.text);
  });

  it('403 permission_error names llm.api_key too', async () => {
    fixture.enqueue(errorReply(403));
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
    expect(fixture.requests).toHaveLength(1);
    expect(r.error?.code).toBe('auth');
    expect(r.text).toContain('`llm.api_key` in config.yaml (or ANTHROPIC_API_KEY)');
    expect(r.text).toContain('permission_error');
    expectPlainLine(r.text);
  });

  it('a 404 that is not the Anthropic API (wrong base URL) names llm.base_url', async () => {
    const other = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/html' });
      res.end('<html>nothing here</html>');
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const r = await runTurn({ client: client({ baseURL: `http://127.0.0.1:${(other.address() as AddressInfo).port}` }), system: system(), tools: tools(), history: [], userText: 'hi', invoke });
      expect(r.error?.code).toBe('config');
      expect(r.text).toContain('`llm.base_url` in config.yaml');
      expectPlainLine(r.text);
    } finally {
      await new Promise<void>((resolve) => other.close(() => resolve()));
    }
  });
});

describe('streaming (SSE)', () => {
  it('the SDK stream() assembles text and tool_use input from the fixture events', async () => {
    fixture.enqueue(toolReply([{ name: 'fs_list', input: { path: dataDir, hidden: false, limit: 5 }, id: 'toolu_01stream' }], 'Streaming a tool call now.'));
    const c = client();
    const texts: string[] = [];
    const stream = c.anthropic.messages.stream({ model: 'claude-test-1', max_tokens: 256, messages: [{ role: 'user', content: 'hi' }] });
    stream.on('text', (t) => texts.push(t));
    const msg = await stream.finalMessage();
    expect(fixture.requests[0]!.stream).toBe(true);
    expect(texts.length).toBeGreaterThan(1);
    expect(texts.join('')).toBe('Streaming a tool call now.');
    expect(msg.stop_reason).toBe('tool_use');
    expect(msg.content[1]).toMatchObject({ type: 'tool_use', id: 'toolu_01stream', name: 'fs_list', input: { path: dataDir, hidden: false, limit: 5 } });
    expect(msg.usage.output_tokens).toBeGreaterThan(0);
  });

  it('writes the real event sequence with event: lines', async () => {
    fixture.enqueue(toolReply([{ name: 'fs_list', input: { path: '/x' }, id: 'toolu_01raw' }], 'ok'));
    const res = await fetch(`${fixture.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY, 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: 'm', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const text = await res.text();
    const events = [...text.matchAll(/^event: (\S+)\ndata: (.*)$/gm)].map((m) => [m[1]!, JSON.parse(m[2]!) as { type: string; delta?: { type?: string; stop_reason?: string } }] as const);
    expect(events.every(([e, d]) => e === d.type)).toBe(true);
    const names = events.map(([e]) => e);
    expect(names[0]).toBe('message_start');
    expect(names.slice(-2)).toEqual(['message_delta', 'message_stop']);
    expect(names).toContain('content_block_start');
    expect(names.filter((n) => n === 'content_block_stop')).toHaveLength(2);
    expect(events.some(([, d]) => d.delta?.type === 'text_delta')).toBe(true);
    expect(events.some(([, d]) => d.delta?.type === 'input_json_delta')).toBe(true);
    expect(events.find(([e]) => e === 'message_delta')![1].delta?.stop_reason).toBe('tool_use');
  });

  it('runs the tool loop over streaming, retrying a mid-stream overloaded error', async () => {
    fixture.enqueue(
      { ...toolReply([{ name: 'fs_list', input: { path: dataDir } }]), streamErrorAfterStart: { type: 'overloaded_error', message: 'Overloaded' } },
      toolReply([{ name: 'fs_list', input: { path: dataDir } }]),
      textReply('streamed answer'),
    );
    const r = await runTurn({ client: client({ stream: true }), system: system(), tools: tools(), history: [], userText: 'list', invoke });
    expect(r.stoppedBy).toBe('end_turn');
    expect(r.text).toBe('streamed answer');
    expect(fixture.requests).toHaveLength(3);
    expect(fixture.requests.every((q) => q.stream)).toBe(true);
    expect(r.actions).toHaveLength(1);
    expect(toolResults(body(fixture.requests[2]!).messages.at(-1)!)[0]!.content).toMatch(/alpha\.txt/);
  });
});

describe('fixture validation', () => {
  const post = (payload: unknown, headers: Record<string, string> = {}) =>
    fetch(`${fixture.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY, 'anthropic-version': '2023-06-01', ...headers },
      body: JSON.stringify(payload),
    });

  it('answers malformed requests with 400 invalid_request_error in the real shape', async () => {
    fixture.respond(() => textReply('should not be reached'));
    const cases: Array<[unknown, RegExp]> = [
      [{ max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }, /^model: Field required/],
      [{ model: 'm', max_tokens: 0, messages: [{ role: 'user', content: 'x' }] }, /^max_tokens/],
      [{ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'x' }, { role: 'user', content: 'y' }] }, /roles must alternate/],
      [{ model: 'm', max_tokens: 10, messages: [{ role: 'assistant', content: 'x' }] }, /first message must use the "user" role/],
      [{
        model: 'm', max_tokens: 10, messages: [
          { role: 'user', content: 'x' },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_01a', name: 't', input: {} }] },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01zzz', content: 'r' }] },
        ],
      }, /unexpected `tool_use_id` found in `tool_result` blocks: toolu_01zzz/],
      [{
        model: 'm', max_tokens: 10, messages: [
          { role: 'user', content: 'x' },
          { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_01a', name: 't', input: {} }] },
          { role: 'user', content: 'no result' },
        ],
      }, /`tool_use` ids were found without `tool_result` blocks immediately after: toolu_01a/],
      [{ model: 'm', max_tokens: 10, tools: [{ name: 'fs.read', input_schema: { type: 'object' } }], messages: [{ role: 'user', content: 'x' }] }, /^tools\.0\.name/],
    ];
    for (const [payload, re] of cases) {
      const res = await post(payload);
      expect(res.status).toBe(400);
      const j = (await res.json()) as { type: string; error: { type: string; message: string } };
      expect(j.type).toBe('error');
      expect(j.error.type).toBe('invalid_request_error');
      expect(j.error.message).toMatch(re);
    }
    const noVersion = await post({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }, { 'anthropic-version': '' });
    expect(noVersion.status).toBe(400);
    expect(((await noVersion.json()) as { error: { message: string } }).error.message).toMatch(/anthropic-version/);
    expect(fixture.accepted).toHaveLength(0);
    const ok = await post({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { content: Array<{ text: string }> }).content[0]!.text).toBe('should not be reached');
  });

  it('sends error replies with the real JSON shape and retry-after', async () => {
    fixture.enqueue(errorReply(429, { retryAfter: 7 }));
    const res = await post({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('7');
    const j = (await res.json()) as Record<string, unknown>;
    expect(j).toMatchObject({ type: 'error', error: { type: 'rate_limit_error', message: expect.any(String) } });
  });
});

describe('conversation store', () => {
  const exchange = (n: number, withTool: boolean, pad = 0): MessageParam[] => {
    const user: MessageParam = { role: 'user', content: [{ type: 'text', text: `question ${n} ${'q'.repeat(pad)}` }] };
    if (!withTool) return [user, { role: 'assistant', content: [{ type: 'text', text: `answer ${n}` }] }];
    return [
      user,
      { role: 'assistant', content: [{ type: 'tool_use', id: `toolu_01x${n}`, name: 'fs_list', input: { path: '/tmp' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: `toolu_01x${n}`, content: `listing ${n} ${'l'.repeat(pad)}` }] },
      { role: 'assistant', content: [{ type: 'text', text: `answer ${n}` }] },
    ];
  };

  it('persists history across a reopen of the database, per room and device', async () => {
    const room = '!persist:example.org';
    const store = new ConversationStore(db, { device: DEVICE });
    store.reset(room);
    store.append(room, exchange(1, true));
    store.append(room, exchange(2, false));
    new ConversationStore(db, { device: 'otherdev' }).append(room, exchange(9, false));
    const before = store.load(room);
    expect(before).toHaveLength(6);

    const db2 = openDatabase(dbFile);
    try {
      const again = new ConversationStore(db2, { device: DEVICE });
      expect(again.load(room)).toEqual(before);
      expect(again.load('!other:example.org')).toEqual([]);
      expect(new ConversationStore(db2, { device: 'otherdev' }).load(room)).toHaveLength(2);
      expect(again.reset(room)).toBe(6);
      expect(again.load(room)).toEqual([]);
    } finally {
      db2.close();
    }
    expect(store.load(room)).toEqual([]);
  });

  it('bounds history by dropping whole exchanges, oldest first, never splitting tool pairs', () => {
    const room = '!bounded:example.org';
    const store = new ConversationStore(db, { device: DEVICE, maxHistoryTokens: 400 });
    for (let i = 1; i <= 10; i++) store.append(room, exchange(i, i % 2 === 0, 200));
    expect(store.historyTokens(room)).toBeLessThanOrEqual(400);
    const h = store.load(room);
    expect(h.length).toBeGreaterThan(0);
    expect(exchangeProblem(h)).toBeNull(); // the whole history alternates and pairs are complete
    const texts = JSON.stringify(h);
    expect(texts).toContain('question 10');
    expect(texts).not.toContain('question 1 ');
    expect(h[0]!.role).toBe('user');
    // An exchange larger than the whole bound is kept compacted (tool steps dropped together).
    const huge = exchange(11, true);
    huge[2] = { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01x11', content: 'z'.repeat(12_000) }] };
    store.append(room, huge);
    const after = store.load(room);
    expect(store.historyTokens(room)).toBeLessThanOrEqual(400);
    expect(exchangeProblem(after)).toBeNull();
    expect(JSON.stringify(after)).toContain('tool steps of this exchange omitted');
    expect(JSON.stringify(after)).not.toContain('toolu_01x11');
    expect(JSON.stringify(after.slice(-2))).toContain('answer 11');
    // Too large even compacted: not stored at all.
    store.append(room, exchange(12, false, 3000));
    expect(JSON.stringify(store.load(room))).not.toContain('question 12');
    expect(() => store.append(room, [{ role: 'user', content: 'dangling' }])).toThrow(/malformed exchange/);
  });

  it('feeds stored history back into a turn that the API accepts', async () => {
    const room = '!feed:example.org';
    const store = new ConversationStore(db, { device: DEVICE });
    fixture.enqueue(toolReply([{ name: 'fs_list', input: { path: dataDir } }]), textReply('first answer'), textReply('second answer'));
    const t1 = await runTurn({ client: client(), system: system(), tools: tools(), history: store.load(room), userText: 'one', invoke });
    store.append(room, t1.messages);
    const t2 = await runTurn({ client: client(), system: system(), tools: tools(), history: store.load(room), userText: 'two', invoke });
    expect(t2.text).toBe('second answer');
    const last = body(fixture.requests.at(-1)!);
    expect(last.messages).toHaveLength(5);
    expect(fixture.requests.every((q) => q.valid)).toBe(true);
  });
});

describe('budget', () => {
  it('refuses to call the model when the daily budget is used up', async () => {
    const store = new ConversationStore(db, { device: 'budgetdev' });
    store.addUsage({ input: 800, output: 300 });
    expect(store.usageToday()).toMatchObject({ input: 800, output: 300, total: 1100, calls: 1 });
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke, budget: store.budget(1000) });
    expect(r.stoppedBy).toBe('budget');
    expect(fixture.requests).toHaveLength(0);
    expect(r.text).toMatch(/token budget/);
    expect(r.text).toContain('1100 of 1000');
    expect(r.text).toContain('!help');
    expect(r.messages).toEqual([]);
  });

  it('stops mid-turn once a call exhausts the budget, and records usage per call', async () => {
    const store = new ConversationStore(db, { device: 'budgetdev2' });
    fixture.enqueue(
      toolReply([{ name: 'fs_list', input: { path: dataDir } }], undefined, { usage: { input_tokens: 900, output_tokens: 150 } }),
      textReply('never sent'),
    );
    const r = await runTurn({ client: client(), system: system(), tools: tools(), history: [], userText: 'hi', invoke, budget: store.budget(1000) });
    expect(r.stoppedBy).toBe('budget');
    expect(fixture.requests).toHaveLength(1);
    expect(r.actions).toHaveLength(1);
    expect(store.usageToday()).toMatchObject({ input: 900, output: 150, total: 1050, calls: 1 });
    expect(exchangeProblem(r.messages)).toBeNull();
    // Another day starts fresh.
    const tomorrow = new Date(Date.now() + 24 * 3600 * 1000);
    expect(store.usageToday(tomorrow).total).toBe(0);
  });
});

describe('tools, names and prompt', () => {
  it('maps capability names to tool names and back', () => {
    expect(toToolName('fs.read')).toBe('fs_read');
    expect(toCapabilityName('fs_read')).toBe('fs.read');
    for (const name of builtinRegistry().names()) {
      expect(isToolMappable(name)).toBe(true);
      expect(toToolName(name)).toMatch(/^[a-zA-Z0-9_-]{1,64}$/);
      expect(toCapabilityName(toToolName(name))).toBe(name);
    }
    expect(isToolMappable('my_family.verb')).toBe(false);
  });

  it('builds tools only for what the manifest allows, with the zod-derived schema', () => {
    const t = tools();
    expect(t.map((x) => x.name)).toEqual(['fs_list']);
    expect(t[0]!.description).toMatch(/List the entries of a directory/);
    expect(t[0]!.input_schema.type).toBe('object');
    expect(Object.keys(t[0]!.input_schema.properties as object)).toEqual(expect.arrayContaining(['path', 'limit', 'hidden']));
    expect(t[0]!.cache_control).toEqual({ type: 'ephemeral' });
  });

  it('writes a stable system prompt naming the device, paths and operator instructions', () => {
    const a = system();
    expect(a).toBe(system());
    expect(a).toContain(`"${DEVICE}" (linux, transport: local`);
    expect(a).toContain(`fs.list (tool fs_list; read; paths: ${dataDir}/**)`);
    expect(a).toContain('Operator instructions:\nAnswer in English.');
    expect(a).toContain('!help');
    expect(a).not.toMatch(/\d{4}-\d{2}-\d{2}/);
  });

  it('serialises failed exec results with exit code and stderr', () => {
    const r: InvokeResult = {
      ok: false, device: DEVICE, capability: 'shell.exec', decision: 'allowed', audit: { seq: 7, hash: 'h' },
      result: { ok: false, exitCode: 1, stdout: 'partial', stderr: 'boom', truncated: false, durationMs: 3, error: { code: 'exec_failed', message: 'exited with code 1: boom' } },
      error: { code: 'exec_failed', message: 'exited with code 1: boom' },
    };
    expect(serializeResult(r)).toBe('exec_failed: exited with code 1: boom\npartial\n[stderr]\nboom');
    expect(auditFooter([{ capability: 'shell.exec', ok: false, auditSeq: 7, exitCode: 1, errorCode: 'exec_failed' }])).toBe('🧾 #7 shell.exec failed (exit 1)');
    expect(auditFooter([])).toBe('🧾 no action taken');
  });
});
