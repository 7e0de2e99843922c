/**
 * Workspaces as bots (issue 18): the descendant rule, workspace.delegate through the one Invoker
 * (gate, controller-side run, audit), the launcher's relay, the bot's IPC client, the workspace
 * prompt and the "live" text.
 */
import * as path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import type { Delegator } from '../capabilities/capability.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { deriveWorkspaceManifest } from '../capabilities/workspace/derive.js';
import { checkDelegation, childrenOf, OrgGate } from '../capabilities/workspace/org.js';
import { DelegationClient, serveDelegatedRun } from '../bots/delegation.js';
import { liveText } from '../bots/format.js';
import { ChildMessageSchema, ParentMessageSchema, parseChildMessage, type ChildMessageInput, type ParentMessage } from '../bots/ipc.js';
import { buildSystemPrompt } from '../bots/llm.js';
import { DelegationRelay } from '../launcher/delegation.js';
import { tempDir } from './helpers/tmp.js';

const silent = pino({ level: 'silent' });

function device(name: string, transport = '{ kind: local }'): Manifest {
  const r = parseManifest(`device: ${name}\ntransport: ${transport}\ncapabilities:\n  fs.list: { paths_allowed: ["/srv/**"] }\n  sys.info: {}\n`, `${name}.yaml`);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.manifest;
}

function workspace(host: Manifest, name: string, parent: string | null, extra: { model?: string; role?: string } = {}): Manifest {
  const d = deriveWorkspaceManifest(host, {
    name, home: `/srv/ws/${name}`, role: extra.role ?? `Looks after ${name}.`, parent, template: null,
    capabilities: ['fs.list', 'workspace.delegate'], ...(extra.model ? { model: extra.model } : {}),
  });
  if (!d.ok) throw new Error(d.error.message);
  return d.manifest;
}

/** lab (device) ← ops-lead ← {ops-db ← db-backup, ops-web}; stray (root workspace); loop-a ↔ loop-b (a cycle). */
function org(): Map<string, Manifest> {
  const lab = device('lab');
  const m = new Map<string, Manifest>([['lab', lab]]);
  for (const [n, p] of [['ops-lead', null], ['ops-db', 'ops-lead'], ['db-backup', 'ops-db'], ['ops-web', 'ops-lead'], ['stray', null], ['loop-a', 'loop-b'], ['loop-b', 'loop-a']] as const) {
    m.set(n, workspace(lab, n, p));
  }
  return m;
}

describe('the descendant rule', () => {
  const o = org();
  const src = { get: (n: string) => o.get(n) };

  it('a parent reaches its children and their children, and the path says how', () => {
    expect(checkDelegation(src, 'ops-lead', 'ops-db')).toEqual({ ok: true, path: ['ops-db', 'ops-lead'] });
    expect(checkDelegation(src, 'ops-lead', 'db-backup')).toEqual({ ok: true, path: ['db-backup', 'ops-db', 'ops-lead'] });
    expect(checkDelegation(src, 'ops-db', 'db-backup').ok).toBe(true);
  });

  it('refuses a sibling, the parent, itself, another root and a device, naming why', () => {
    const why = (from: string, to: string): string => {
      const c = checkDelegation(src, from, to);
      if (c.ok) throw new Error(`${from} → ${to} was allowed`);
      return c.reason;
    };
    expect(why('ops-db', 'ops-web')).toBe('workspace.delegate from ops-db to ops-web denied: ops-web is not a descendant of ops-db (its line: ops-web → ops-lead)');
    expect(why('ops-db', 'ops-lead')).toMatch(/ops-lead is not a descendant of ops-db/);
    expect(why('db-backup', 'ops-lead')).toMatch(/not a descendant/);
    expect(why('ops-lead', 'ops-lead')).toMatch(/cannot delegate to itself/);
    expect(why('ops-lead', 'stray')).toMatch(/stray is not a descendant of ops-lead/);
    expect(why('ops-lead', 'lab')).toMatch(/lab is a device, not a workspace/);
    expect(why('lab', 'ops-lead')).toMatch(/lab is not a workspace/);
    expect(why('ops-lead', 'ghost')).toMatch(/there is no workspace ghost/);
  });

  it('a cycle in the parent links ends the walk with a denial (no hang), even for a member of the cycle', () => {
    const c = checkDelegation(src, 'ops-lead', 'loop-a');
    expect(c).toEqual({ ok: false, reason: expect.stringMatching(/parent links of loop-a form a cycle \(loop-a → loop-b → loop-a\)/) });
    // loop-b is loop-a's parent: the walk finds it first, so this one is allowed by the links as written.
    expect(checkDelegation(src, 'loop-b', 'loop-a').ok).toBe(true);
  });

  it('a parent that is gone ends the line', () => {
    const lab = device('lab');
    const m = new Map<string, Manifest>([['lab', lab], ['orphan', workspace(lab, 'orphan', 'gone')], ['top', workspace(lab, 'top', null)]]);
    expect(checkDelegation({ get: (n) => m.get(n) }, 'top', 'orphan')).toMatchObject({ ok: false, reason: expect.stringMatching(/its line: orphan → gone/) });
  });

  it('children are the direct ones, in code-point order', () => {
    const list = () => [...o.entries()].map(([device, manifest]) => ({ device, manifest }));
    expect(childrenOf({ list }, 'ops-lead')).toEqual(['ops-db', 'ops-web']);
    expect(childrenOf({ list }, 'ops-db')).toEqual(['db-backup']);
    expect(childrenOf({ list }, 'stray')).toEqual([]);
  });
});

function invokerWith(manifests: Map<string, Manifest>, delegate?: Delegator) {
  const db = openDatabase(path.join(tempDir('mp-delegate-'), 'meshpilot.db'));
  const audit = new SqliteAuditLog(db);
  const src = { get: (n: string) => manifests.get(n) };
  const invoker = new Invoker({ manifests: src, audit, gate: [new OrgGate(src)], ...(delegate ? { delegate } : {}) });
  return { audit, invoker };
}

describe('workspace.delegate through the Invoker', () => {
  const refs = [{ seq: 7, hash: 'a'.repeat(64), capability: 'fs.list', ok: true }];

  it('a non-descendant is denied by the gate before anything runs, audited denied', async () => {
    let called = 0;
    const { audit, invoker } = invokerWith(org(), async () => { called++; throw new Error('must not run'); });
    const r = await invoker.invoke({ device: 'ops-db', capability: 'workspace.delegate', args: { to: 'ops-web', task: 'hi' }, actor: 'llm:@op:x' });
    expect(r).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
    expect(called).toBe(0);
    expect(audit.tail(5, 'ops-db').map((e) => `${e.capability} ${e.decision}/${e.outcome}/${e.error_code}`)).toEqual(['workspace.delegate denied/not_run/policy_denied']);
  });

  it('a descendant gets the task in the calling process, even on a mesh host, with the 300-s default timeout', async () => {
    const mesh = device('far', '{ kind: mesh, address: 10.99.0.9 }');
    const m = new Map<string, Manifest>([['far', mesh], ['lead', workspace(mesh, 'lead', null)], ['kid', workspace(mesh, 'kid', 'lead')]]);
    const seen: Array<Parameters<Delegator>[0]> = [];
    const { audit, invoker } = invokerWith(m, async (req) => {
      seen.push(req);
      return { ok: true, value: { workspace: req.to, answer: 'two files', footer: '🧾 #7 fs.list ok', audit: refs } };
    });
    const r = await invoker.invoke({ device: 'lead', capability: 'workspace.delegate', args: { to: 'kid', task: '  list your home  ' }, actor: 'llm:@op:x', requestId: 'req-1' });
    expect(r.ok).toBe(true);
    expect(seen).toEqual([{ to: 'kid', task: 'list your home', timeoutMs: 300_000, requestId: 'req-1' }]);
    expect(r.result?.stdout).toBe(`two files\n\n🧾 kid #7 fs.list ok (${'a'.repeat(12)})`);
    expect(r.result?.data).toEqual({ workspace: 'kid', answer: 'two files', footer: '🧾 #7 fs.list ok', audit: refs });
    expect(audit.tail(5, 'lead').map((e) => `${e.decision}/${e.outcome}`)).toEqual(['allowed/started', 'allowed/ok']);
  });

  it('outside a bot (no delegate service) it fails as config, audited as an error, not a denial', async () => {
    const { audit, invoker } = invokerWith(org());
    const r = await invoker.invoke({ device: 'ops-lead', capability: 'workspace.delegate', args: { to: 'ops-db', task: 'x' }, actor: 'cli:root' });
    expect(r).toMatchObject({ ok: false, decision: 'allowed', error: { code: 'config' } });
    expect(r.error?.message).toMatch(/runs only in a workspace's bot under the launcher/);
    expect(audit.tail(1, 'ops-lead')[0]).toMatchObject({ outcome: 'error', error_code: 'config' });
  });

  it('a refusal from the other side (the launcher re-check) comes back as the call\'s error', async () => {
    const { invoker } = invokerWith(org(), async () => ({ ok: false, error: { code: 'policy_denied', message: 'launcher says no' } }));
    const r = await invoker.invoke({ device: 'ops-lead', capability: 'workspace.delegate', args: { to: 'ops-db', task: 'x' }, actor: 'a' });
    expect(r).toMatchObject({ ok: false, decision: 'allowed', error: { code: 'policy_denied', message: 'launcher says no' } });
  });

  it('validates its input: a task of 1..4000 characters and a workspace name', async () => {
    const { invoker } = invokerWith(org(), async () => { throw new Error('must not run'); });
    const long = await invoker.invoke({ device: 'ops-lead', capability: 'workspace.delegate', args: { to: 'ops-db', task: 'x'.repeat(4001) }, actor: 'a' });
    expect(long.error?.code).toBe('invalid_args');
    const bad = await invoker.invoke({ device: 'ops-lead', capability: 'workspace.delegate', args: { to: '../etc', task: 'x' }, actor: 'a' });
    expect(bad.error?.code).toBe('invalid_args');
  });
});

function relayWith(o: Map<string, Manifest>, running: Set<string>, graceMs = 50) {
  const sent: Array<{ to: string; msg: ParentMessage }> = [];
  const relay = new DelegationRelay({
    org: { get: (n) => o.get(n) }, logger: silent, graceMs,
    sendTo: (to, msg) => {
      if (!running.has(to)) return false;
      sent.push({ to, msg: ParentMessageSchema.parse(msg) });
      return true;
    },
  });
  return { relay, sent };
}

const request = (to: string, timeoutMs = 10_000) => ChildMessageSchema.parse({ type: 'delegate-request', id: 'parent-id-1', to, task: 'count files', timeoutMs }) as Extract<ReturnType<typeof ChildMessageSchema.parse>, { type: 'delegate-request' }>;

describe('the CLI and API runtime (launcher/runtime-core.ts)', () => {
  it('denies a delegate outside the subtree as a policy decision, audited denied, as in the bots', async () => {
    const { openRuntime } = await import('../launcher/runtime-core.js');
    const { writeFileSync } = await import('node:fs');
    const { stringify } = await import('yaml');
    const root = tempDir('mp-ws-rt-');
    const rt = openRuntime({ root });
    try {
      for (const [name, m] of org()) {
        const { hash: _h, source: _s, ...body } = m;
        writeFileSync(path.join(rt.home.manifests, `${name}.yaml`), stringify(body));
      }
      const r = await rt.invoker.invoke({ device: 'ops-db', capability: 'workspace.delegate', args: { to: 'stray', task: 'hi' }, actor: 'cli:root' });
      expect(r).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
      expect(rt.audit.tail(1, 'ops-db').map((e) => `${e.decision}/${e.outcome}`)).toEqual(['denied/not_run']);
      // a descendant passes the gate and then meets the missing delegate service (config), not a denial
      const ok = await rt.invoker.invoke({ device: 'ops-lead', capability: 'workspace.delegate', args: { to: 'db-backup', task: 'hi' }, actor: 'cli:root' });
      expect(ok).toMatchObject({ ok: false, decision: 'allowed', error: { code: 'config' } });
    } finally {
      await rt.close();
    }
  });
});

describe('the launcher relays and re-checks', () => {
  it('refuses a non-descendant itself, without handing anything to the target', () => {
    const { relay, sent } = relayWith(org(), new Set(['ops-db', 'ops-web', 'ops-lead']));
    relay.request('ops-db', request('ops-web'));
    expect(sent).toEqual([{ to: 'ops-db', msg: { type: 'delegate-result', id: 'parent-id-1', ok: false, error: { code: 'policy_denied', message: expect.stringMatching(/ops-web is not a descendant of ops-db/) } } }]);
    expect(relay.size).toBe(0);
  });

  it('relays to the child under its own id; only that child answers, and the parent gets the answer under its id', () => {
    const { relay, sent } = relayWith(org(), new Set(['ops-db', 'ops-lead', 'ops-web']));
    relay.request('ops-lead', request('ops-db'));
    expect(sent).toHaveLength(1);
    const run = sent[0]!;
    expect(run.to).toBe('ops-db');
    expect(run.msg).toMatchObject({ type: 'delegate-run', from: 'ops-lead', task: 'count files', timeoutMs: 10_000 });
    const runId = (run.msg as { id: string }).id;
    expect(runId).not.toBe('parent-id-1');
    const done = ChildMessageSchema.parse({ type: 'delegate-done', id: runId, ok: true, answer: '3 files', footer: '🧾 #2 fs.list ok', audit: [{ seq: 2, hash: 'b'.repeat(64), capability: 'fs.list', ok: true }] }) as Extract<ReturnType<typeof ChildMessageSchema.parse>, { type: 'delegate-done' }>;
    relay.done('ops-web', done); // a bot it was not sent to
    expect(sent).toHaveLength(1);
    relay.done('ops-db', done);
    expect(sent[1]).toEqual({ to: 'ops-lead', msg: { type: 'delegate-result', id: 'parent-id-1', ok: true, workspace: 'ops-db', answer: '3 files', footer: '🧾 #2 fs.list ok', audit: [{ seq: 2, hash: 'b'.repeat(64), capability: 'fs.list', ok: true }] } });
    expect(relay.size).toBe(0);
  });

  it('a child that is not running, exits, or is too slow: the parent hears it once', async () => {
    const running = new Set(['ops-lead']);
    const { relay, sent } = relayWith(org(), running);
    relay.request('ops-lead', request('ops-db'));
    expect(sent.at(-1)?.msg).toMatchObject({ ok: false, error: { code: 'unreachable', message: expect.stringMatching(/bot of ops-db is not running/) } });
    running.add('ops-db');
    relay.request('ops-lead', request('ops-db'));
    relay.gone('ops-db');
    expect(sent.at(-1)).toMatchObject({ to: 'ops-lead', msg: { ok: false, error: { code: 'unreachable', message: expect.stringMatching(/stopped before it answered/) } } });
    relay.request('ops-lead', request('ops-db', 1_000));
    const before = sent.length;
    await new Promise((r) => setTimeout(r, 1_150));
    expect(sent.slice(before)).toEqual([{ to: 'ops-lead', msg: { type: 'delegate-result', id: 'parent-id-1', ok: false, error: { code: 'timeout', message: 'ops-db did not answer within 1 s' } } }]);
    relay.close();
  });

  it('bounds the delegations in flight per parent', () => {
    const { relay, sent } = relayWith(org(), new Set(['ops-lead', 'ops-db']));
    for (let i = 0; i < 5; i++) relay.request('ops-lead', request('ops-db'));
    expect(sent.filter((s) => s.msg.type === 'delegate-run')).toHaveLength(4);
    expect(sent.at(-1)?.msg).toMatchObject({ type: 'delegate-result', ok: false, error: { code: 'quota' } });
    relay.close();
  });
});

describe('the bot\'s delegation client', () => {
  it('outside the launcher it says so as a config error', async () => {
    const r = await new DelegationClient(undefined).delegate({ to: 'kid', task: 't', timeoutMs: 5_000, requestId: 'r' });
    expect(r).toEqual({ ok: false, error: { code: 'config', message: expect.stringMatching(/needs the launcher/) } });
  });

  it('sends a bounded request and resolves with the launcher\'s result', async () => {
    const out: ChildMessageInput[] = [];
    const client = new DelegationClient((m) => { out.push(m); return true; });
    const p = client.delegate({ to: 'kid', task: 'do it', timeoutMs: 10 * 3_600_000, requestId: 'r' });
    expect(out).toHaveLength(1);
    const req = parseChildMessage(out[0]);
    expect(req).toMatchObject({ ok: true, msg: { type: 'delegate-request', to: 'kid', task: 'do it', timeoutMs: 3_600_000 } });
    const id = (out[0] as { id: string }).id;
    client.onResult(ParentMessageSchema.parse({ type: 'delegate-result', id: 'someone-else', ok: false }) as Extract<ParentMessage, { type: 'delegate-result' }>);
    client.onResult(ParentMessageSchema.parse({ type: 'delegate-result', id, ok: true, workspace: 'kid', answer: 'done', footer: 'f', audit: [] }) as Extract<ParentMessage, { type: 'delegate-result' }>);
    await expect(p).resolves.toEqual({ ok: true, value: { workspace: 'kid', answer: 'done', footer: 'f', audit: [] } });
  });

  it('a stopping bot abandons what it waits for', async () => {
    const client = new DelegationClient(() => true);
    const p = client.delegate({ to: 'kid', task: 't', timeoutMs: 60_000, requestId: 'r' });
    client.close();
    await expect(p).resolves.toMatchObject({ ok: false, error: { code: 'unreachable' } });
  });
});

describe('the child answers a run', () => {
  const run = ParentMessageSchema.parse({ type: 'delegate-run', id: 'run-id-123', from: 'ops-lead', task: 'list', timeoutMs: 5_000 }) as Extract<ParentMessage, { type: 'delegate-run' }>;

  it('a long answer is cut with a note so the message stays within the IPC limit', async () => {
    const out: ChildMessageInput[] = [];
    await serveDelegatedRun(run, { runDelegated: async () => ({ ok: true, answer: 'z'.repeat(70_000), footer: 'f', audit: [] }) }, (m) => out.push(m), silent);
    const parsed = parseChildMessage(out[0]);
    expect(parsed.ok).toBe(true);
    const answer = parsed.ok && parsed.msg.type === 'delegate-done' ? parsed.msg.answer ?? '' : '';
    expect(answer.endsWith('[answer cut at 15936 characters]')).toBe(true);
    expect(answer.length).toBeLessThanOrEqual(16_000);
  });

  it('a failed or throwing turn answers with its error, under the run\'s id', async () => {
    const out: ChildMessageInput[] = [];
    await serveDelegatedRun(run, { runDelegated: async () => ({ ok: false, error: { code: 'config', message: 'no LLM' } }) }, (m) => out.push(m), silent);
    await serveDelegatedRun(run, { runDelegated: async () => { throw new Error('boom'); } }, (m) => out.push(m), silent);
    expect(out).toEqual([
      { type: 'delegate-done', id: 'run-id-123', ok: false, error: { code: 'config', message: 'no LLM' } },
      { type: 'delegate-done', id: 'run-id-123', ok: false, error: { code: 'internal', message: 'boom' } },
    ]);
  });
});

describe('IPC bounds for delegation', () => {
  it('refuses a task over 4000 characters, a bad id and an unbounded timeout; cuts a long answer', () => {
    expect(parseChildMessage({ type: 'delegate-request', id: 'abcdefgh', to: 'kid', task: 'x'.repeat(4001), timeoutMs: 1000 }).ok).toBe(false);
    expect(parseChildMessage({ type: 'delegate-request', id: 'bad id!', to: 'kid', task: 'x', timeoutMs: 1000 }).ok).toBe(false);
    expect(parseChildMessage({ type: 'delegate-request', id: 'abcdefgh', to: 'kid', task: 'x', timeoutMs: 10 * 3_600_000 }).ok).toBe(false);
    const done = parseChildMessage({ type: 'delegate-done', id: 'abcdefgh', ok: true, answer: 'y'.repeat(30_000) });
    expect(done.ok && done.msg.type === 'delegate-done' ? done.msg.answer?.length : 0).toBe(16_001);
    expect(ParentMessageSchema.safeParse({ type: 'delegate-run', id: 'abcdefgh', from: '../x', task: 't', timeoutMs: 1000 }).success).toBe(false);
  });
});

describe('the bot as a workspace', () => {
  const lab = device('lab');
  const lead = workspace(lab, 'ops-lead', null, { role: 'Keeps the home lab healthy; asks its team for details.' });
  const db = workspace(lab, 'ops-db', 'ops-lead', { model: 'claude-ws' });

  it('says it is live and whom it reports to; a device bot keeps its line', () => {
    expect(liveText('ops-lead', lead).plain).toBe('✓ ops-lead live (reports to —)');
    expect(liveText('ops-db', db).plain).toBe('✓ ops-db live (reports to ops-lead)');
    expect(liveText('lab', lab).plain).toBe('✓ lab live. Ask me anything, or send !help.');
  });

  it('its prompt is built on its role, home, parent and team, keeps the audit rules, and is deterministic', () => {
    const prompt = buildSystemPrompt({ ...lead, children: ['ops-db', 'ops-web'] });
    const lines = prompt.split('\n');
    expect(lines[0]).toBe('You are the workspace "ops-lead", an agent with a job, run by meshpilot on the device "lab" (linux, transport: local (this machine)).');
    expect(lines[1]).toBe('Your role: Keeps the home lab healthy; asks its team for details.');
    expect(prompt).toContain('Your home directory on lab: /srv/ws/ops-lead.');
    expect(prompt).toContain('You report to the operators directly');
    expect(prompt).toContain('Your team (workspaces that report to you): ops-db, ops-web. Hand one of them a task with the tool workspace_delegate');
    expect(prompt).toContain('Never say you did something');
    expect(prompt).toContain('every call is checked against the device manifest and recorded in a hash-chained audit log');
    expect(prompt).toContain('What your manifest allows (paths narrowed to your home /srv/ws/ops-lead):');
    expect(prompt).toContain('- fs.list (tool fs_list; read; paths: /srv/ws/ops-lead, /srv/ws/ops-lead/**)');
    expect(prompt).not.toContain('meshpilot bot for the device');
    expect(buildSystemPrompt({ ...lead, children: ['ops-db', 'ops-web'] })).toBe(prompt);
    const child = buildSystemPrompt({ ...db, children: [] });
    expect(child).toContain('You report to the workspace "ops-lead"');
    expect(child).toContain('No workspace reports to you yet');
    expect(buildSystemPrompt(lab).split('\n')[0]).toBe('You are the meshpilot bot for the device "lab" (linux, transport: local (this machine)).');
  });

  it('the derived manifest carries its model (the bot uses it instead of llm.model)', () => {
    expect(db.workspace?.model).toBe('claude-ws');
    expect(lead.workspace?.model).toBeUndefined();
  });
});
