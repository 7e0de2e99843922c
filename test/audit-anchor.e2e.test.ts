/**
 * Defect 2.3 of issue 14, end to end with the real device bot: a controller chain rewritten with every
 * later hash recomputed verifies by itself, but not against the head the bot anchored in its DM room.
 * `audit verify` exits 1 naming the device and seq, the restarted bot refuses to anchor the forged
 * head (and says so), and the health monitor marks the device corrupted.
 */
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUDIT_HEAD_EVENT } from '../bots/device-bot.js';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { runCli, type CliIo } from '../launcher/cli.js';
import { createBotEnv, waitReady, type BotEnv } from './helpers/bot-env.js';
import { forgeAuditEntry } from './helpers/forge-audit.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let room: string;
let bot: ChildProcess;
let botUserId: string;
/** The head the bot anchored before the forgery. */
let anchored: { seq: number; hash: string };

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: CliIo = { out: (t) => { out += t; }, err: (t) => { err += t; }, isTTY: false };
  const prev = process.env['MESHPILOT_HOME'];
  process.env['MESHPILOT_HOME'] = env.home;
  try {
    return { code: await runCli(args, io), out, err };
  } finally {
    if (prev === undefined) delete process.env['MESHPILOT_HOME'];
    else process.env['MESHPILOT_HOME'] = prev;
  }
}

/** The anchor state in the DM as the operator's client reads it (null: none). */
async function anchorInRoom(): Promise<{ seq: number; hash: string } | null> {
  const res = await fetch(`${env.hs.url}/_matrix/client/v3/rooms/${encodeURIComponent(room)}/state/${AUDIT_HEAD_EVENT}/box`, { headers: { Authorization: `Bearer ${env.operator.accessToken}` } });
  if (res.status === 404) return null;
  expect(res.status).toBe(200);
  return (await res.json()) as { seq: number; hash: string };
}

async function waitAnchor(pred: (a: { seq: number; hash: string }) => boolean, ms = 20_000): Promise<{ seq: number; hash: string }> {
  const until = Date.now() + ms;
  for (;;) {
    const a = await anchorInRoom();
    if (a && pred(a)) return a;
    if (Date.now() > until) throw new Error(`no matching anchor in the room (last: ${JSON.stringify(a)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function botSays(match: RegExp, sinceIdx: number): Promise<string> {
  const e = await env.phone.waitFor((ev) => ev.sender === botUserId && ev.type === 'm.room.message' && env.phone.events.indexOf(ev) >= sinceIdx && match.test(bodyOf(ev)), 20_000);
  return bodyOf(e);
}

async function stopBot(): Promise<void> {
  if (bot.exitCode !== null || bot.signalCode !== null) return;
  const exited = new Promise((r) => bot.once('exit', r));
  bot.kill('SIGTERM');
  await exited;
}

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false });
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', '  sys.info: {}\n  sys.health: {}\n');
  ({ child: bot, room } = await env.startBotInDm('box'));
  // Two commands, the head anchored after each.
  for (let i = 0; i < 2; i++) {
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!status');
    await botSays(/🖥 box/, idx);
  }
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  const head = new SqliteAuditLog(db).head('box')!;
  db.close();
  anchored = await waitAnchor((a) => a.seq === head.seq);
  expect(anchored.hash).toBe(head.hash);
  await stopBot();
  // Before the forgery the anchor matches the chain.
  const before = await cli(['audit', 'verify', '--device', 'box']);
  expect(before.code).toBe(0);
  expect(before.out).toContain(`box: ok ${anchored.seq} entries`);
  // The attacker: entry 1 rewritten, every later hash recomputed.
  forgeAuditEntry(path.join(env.home, 'meshpilot.db'), 'box', 1, (e) => { e.actor = '@someone-innocent:example.org'; });
}, 90_000);

afterAll(async () => {
  await env?.cleanup();
});

describe('a rewritten controller chain against its Matrix anchor', () => {
  it('audit verify exits 1 naming the device and the anchored seq, though the chain verifies by itself', async () => {
    const r = await cli(['audit', 'verify']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(new RegExp(`^box: REWRITTEN at seq ${anchored.seq}: `, 'm'));
    expect(r.out).toContain(anchored.hash.slice(0, 12));
  });

  it('the restarted bot refuses to anchor the forged head, says so in the room, and the old anchor stays', async () => {
    bot = env.startBot('box');
    await waitReady(bot);
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, '!status');
    await botSays(/🖥 box/, idx);
    const warning = await botSays(/audit log of box was rewritten/, idx);
    expect(warning).toContain(`seq ${anchored.seq}`);
    expect(warning).toContain('meshpilot audit verify');
    // The chain grew, but the anchor still holds the head from before the forgery.
    await new Promise((r) => setTimeout(r, 500));
    expect(await anchorInRoom()).toMatchObject({ seq: anchored.seq, hash: anchored.hash });
    await stopBot();
  }, 60_000);

  it('the health monitor marks the device corrupted with the seq (meshpilot health, doctor)', async () => {
    const r = await cli(['health', '--json']);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.out) as { devices: Array<{ device: string; state: string; detail: string; controllerChain?: { ok: boolean; badSeq?: number } }>; alerts: string[] };
    const box = report.devices.find((d) => d.device === 'box');
    expect(box?.state).toBe('corrupted');
    expect(box?.detail).toContain(`first bad seq ${anchored.seq}`);
    expect(box?.controllerChain).toMatchObject({ ok: false, badSeq: anchored.seq });
    expect(report.alerts.join('\n')).toContain('[ALERT] device_id=box status=corrupted');
    const doctor = await cli(['doctor']);
    expect(doctor.code).toBe(1);
    expect(doctor.out).toMatch(new RegExp(`^FAIL audit box .*rewritten: seq ${anchored.seq} disagrees`, 'm'));
    const text = await cli(['health']);
    expect(text.out).toMatch(new RegExp(`^box\\s+corrupted .*audit=BAD@${anchored.seq}`, 'm'));
  }, 60_000);
});
