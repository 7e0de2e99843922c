/**
 * End to end (issue 18): two workspaces derived from a local device's manifest, each with its own bot
 * account and bot process under the real supervisor. The operator asks the parent; the parent's LLM
 * (the Anthropic fixture) calls workspace.delegate; the launcher relays the task to the child's bot,
 * whose LLM lists its home; both chains hold their entries and the answer carries the child's audit
 * references. A delegate outside the parent's subtree is denied and audited as denied.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { parseManifest } from '../capabilities/manifest.js';
import { deriveWorkspaceManifest, type WorkspaceSpec } from '../capabilities/workspace/derive.js';
import { Supervisor } from '../launcher/supervisor.js';
import { textReply, toolReply, type RecordedRequest } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, DEVICE_MAIN, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { silentLogger } from './helpers/supervised-bot.js';

const LEAD = 'ops-lead';
const DB = 'ops-db';
const STRAY = 'stray';

let env: BotEnv;
let sup: Supervisor;
const users: Record<string, string> = {};
const rooms: Record<string, string> = {};
let dbHome = '';

interface Body {
  model: string;
  system: Array<{ text: string }>;
  messages: Array<{ role: string; content: string | Array<{ type: string; text?: string; content?: unknown }> }>;
}
const bodyOfReq = (r: RecordedRequest): Body => r.body as Body;
const systemOf = (r: RecordedRequest): string => bodyOfReq(r).system.map((b) => b.text).join('');
const isFrom = (ws: string) => (r: RecordedRequest): boolean => systemOf(r).startsWith(`You are the workspace "${ws}"`);

function writeWorkspace(lab: ReturnType<typeof loadLab>, spec: WorkspaceSpec): void {
  const d = deriveWorkspaceManifest(lab, spec);
  if (!d.ok) throw new Error(d.error.message);
  writeFileSync(path.join(env.home, 'manifests', `${spec.name}.yaml`), d.text);
  mkdirSync(spec.home, { recursive: true });
}

function loadLab() {
  const file = path.join(env.home, 'manifests', 'lab.yaml');
  const r = parseManifest(readFileSync(file, 'utf8'), file);
  if (!r.ok) throw new Error('lab.yaml does not parse');
  return r.manifest;
}

function audit() {
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  return { log: new SqliteAuditLog(db), close: () => db.close() };
}

const said = (who: string, room: string, match: RegExp, since: number) => (e: ClientEvent): boolean =>
  e.sender === users[who] && e.room_id === room && e.type === 'm.room.message' && env.phone.events.indexOf(e) >= since && match.test(bodyOf(e));

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 30 });
  for (const ws of [LEAD, DB]) users[ws] = (await env.registerBot(ws)).userId;
  // The host device: a local manifest, with no bot of its own in this test.
  env.writeManifest('lab', [`  fs.list: { paths_allowed: ["${env.work}/**"] }`, '  sys.info: {}', ''].join('\n'));
  const lab = loadLab();
  dbHome = path.join(env.work, DB);
  writeWorkspace(lab, { name: LEAD, home: path.join(env.work, LEAD), role: 'Keeps the home lab healthy; asks its team for details.', parent: null, template: null, capabilities: ['fs.list', 'workspace.delegate'] });
  writeWorkspace(lab, { name: DB, home: dbHome, role: 'Looks after the databases.', model: 'claude-ws-db', parent: LEAD, template: null, capabilities: ['fs.list'] });
  // A workspace outside ops-lead's subtree (no bot needed: the delegate to it is denied before anything runs).
  writeWorkspace(lab, { name: STRAY, home: path.join(env.work, STRAY), role: 'Nobody asks me.', parent: null, template: null, capabilities: ['fs.list'] });
  writeFileSync(path.join(dbHome, 'dump-2026-12-01.sql'), 'x');

  env.llm.respond((req) => {
    const b = bodyOfReq(req);
    const last = b.messages.at(-1);
    const blocks = typeof last?.content === 'string' ? [{ type: 'text', text: last.content }] : last?.content ?? [];
    const afterTool = blocks.some((x) => x.type === 'tool_result');
    const text = blocks.map((x) => x.text ?? '').join(' ');
    if (isFrom(DB)(req)) {
      return afterTool ? textReply('My home holds one dump: dump-2026-12-01.sql.') : toolReply([{ name: 'fs_list', input: { path: dbHome } }]);
    }
    if (isFrom(LEAD)(req)) {
      if (afterTool) return textReply(/not a descendant/.test(JSON.stringify(blocks)) ? 'I may not hand tasks to stray.' : 'ops-db reports one dump file.');
      const to = /stray/.test(text) ? STRAY : DB;
      return toolReply([{ name: 'workspace_delegate', input: { to, task: 'List the files in your home directory.' } }]);
    }
    return textReply('unexpected request');
  });

  sup = new Supervisor({
    entry: DEVICE_MAIN, home: env.home, desiredDevices: () => [LEAD, DB], watch: false,
    settings: { maxCrashes: 3, crashWindowS: 60, backoffMaxS: 1, readyTimeoutMs: 90_000 },
    env: { MESHPILOT_MATRIX_E2EE: 'off', MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn' },
    logger: silentLogger,
  });
  const ready = new Set<string>();
  const allReady = new Promise<void>((resolve) => sup.on('ready', (e) => { ready.add(e.device); if (ready.size === 2) resolve(); }));
  await sup.start();
  await allReady;
  for (const ws of [LEAD, DB]) {
    const live = await env.phone.waitFor((e) => e.sender === users[ws] && e.type === 'm.room.message' && /✓ .* live/.test(bodyOf(e)), 60_000);
    rooms[ws] = live.room_id;
    await env.phone.waitFor((e) => e.room_id === live.room_id && e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join');
  }
}, 180_000);

afterAll(async () => {
  await sup?.stop();
  await env?.cleanup();
});

describe('workspace bots and workspace.delegate over the real supervisor', () => {
  it('each workspace bot says it is live and whom it reports to', () => {
    const live = (ws: string): string[] => env.phone.events.filter((e) => e.sender === users[ws] && e.type === 'm.room.message' && e.room_id === rooms[ws]).map(bodyOf).filter((t) => t.includes('live'));
    expect(live(LEAD)).toEqual(['✓ ops-lead live (reports to —)']);
    expect(live(DB)).toEqual(['✓ ops-db live (reports to ops-lead)']);
  });

  it('the parent delegates to its child: both chains hold the turn, the child works in its operators\' DM, and the answer carries its audit refs', async () => {
    const since = env.phone.events.length;
    const firstReq = env.llm.requests.length;
    await env.phone.client.sendTextMessage(rooms[LEAD]!, 'ask ops-db what is in its home');

    // The child shows the task and its own answer, with its footer, in its operators' DM.
    const task = await env.phone.waitFor(said(DB, rooms[DB]!, /^↳ task from ops-lead: List the files in your home directory\.$/, since), 60_000);
    const childReply = await env.phone.waitFor(said(DB, rooms[DB]!, /My home holds one dump/, since), 60_000);
    expect(env.phone.events.indexOf(task)).toBeLessThan(env.phone.events.indexOf(childReply));
    const childFooter = /🧾 #(\d+) fs\.list ok/.exec(bodyOf(childReply));
    expect(childFooter).not.toBeNull();
    const childSeq = Number(childFooter![1]);

    const parentReply = await env.phone.waitFor(said(LEAD, rooms[LEAD]!, /ops-db reports one dump file/, since), 60_000);
    const parentFooter = /🧾 #(\d+) workspace\.delegate ok/.exec(bodyOf(parentReply));
    expect(parentFooter).not.toBeNull();

    const a = audit();
    try {
      const childEntry = a.log.get(DB, childSeq);
      expect(childEntry).toMatchObject({ capability: 'fs.list', decision: 'allowed', outcome: 'ok', actor: 'delegate:ops-lead', args: { path: dbHome } });
      expect(a.log.verify(DB).ok).toBe(true);
      const parentEntry = a.log.get(LEAD, Number(parentFooter![1]));
      expect(parentEntry).toMatchObject({ capability: 'workspace.delegate', decision: 'allowed', outcome: 'ok', actor: `llm:${env.operator.userId}`, args: { to: DB } });
      expect(a.log.verify(LEAD).ok).toBe(true);

      // What the parent's model got back: the child's words and its audit reference (seq + hash of its own chain).
      const leadFinal = env.llm.accepted.filter(isFrom(LEAD)).at(-1)!;
      const toolResult = JSON.stringify(bodyOfReq(leadFinal).messages.at(-1));
      expect(toolResult).toContain('My home holds one dump: dump-2026-12-01.sql.');
      expect(toolResult).toContain(`ops-db #${childSeq} fs.list ok (${childEntry!.hash.slice(0, 12)})`);
    } finally {
      a.close();
    }

    // The child ran on its own model; the parent on the config's.
    const turn = env.llm.accepted.slice(firstReq);
    expect(new Set(turn.filter(isFrom(DB)).map((r) => bodyOfReq(r).model))).toEqual(new Set(['claude-ws-db']));
    expect(new Set(turn.filter(isFrom(LEAD)).map((r) => bodyOfReq(r).model))).toEqual(new Set(['claude-test']));
    // The child's prompt is its role, its home and its parent.
    const childSystem = systemOf(turn.find(isFrom(DB))!);
    expect(childSystem).toContain('Your role: Looks after the databases.');
    expect(childSystem).toContain(`Your home directory on lab: ${dbHome}.`);
    expect(childSystem).toContain('You report to the workspace "ops-lead"');
    expect(systemOf(turn.find(isFrom(LEAD))!)).toContain('Your team (workspaces that report to you): ops-db.');
  }, 120_000);

  it('a delegate outside the subtree is denied before anything runs and audited as denied', async () => {
    const since = env.phone.events.length;
    const before = env.llm.accepted.length;
    const dbHead = (() => { const a = audit(); try { return a.log.head(DB)?.seq ?? 0; } finally { a.close(); } })();
    await env.phone.client.sendTextMessage(rooms[LEAD]!, 'ask stray for a status');
    const reply = await env.phone.waitFor(said(LEAD, rooms[LEAD]!, /I may not hand tasks to stray/, since), 60_000);
    const footer = /🧾 #(\d+) workspace\.delegate denied/.exec(bodyOf(reply));
    expect(footer).not.toBeNull();
    const a = audit();
    try {
      expect(a.log.get(LEAD, Number(footer![1]))).toMatchObject({
        capability: 'workspace.delegate', decision: 'denied', outcome: 'not_run', error_code: 'policy_denied', args: { to: STRAY },
        reason: expect.stringMatching(/stray is not a descendant of ops-lead/),
      });
      expect(a.log.head(STRAY)).toBeNull();
      expect(a.log.head(DB)?.seq ?? 0).toBe(dbHead);
    } finally {
      a.close();
    }
    // Only the parent's model was asked (its call and its answer): nothing reached another workspace.
    expect(env.llm.accepted.slice(before).every(isFrom(LEAD))).toBe(true);
  }, 90_000);
});
