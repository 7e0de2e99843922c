/**
 * A request waiting for approval when the bot is killed (kill -9): the restarted bot records that it
 * was dropped (a `not_run` audit entry with the request's id) and tells the room which request it
 * was and that it must be asked again.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, waitReady, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

describe('a pending approval across kill -9 of the bot', () => {
  let env: BotEnv;
  let room: string;
  let botUserId: string;
  let child: ReturnType<BotEnv['startBot']>;
  const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

  beforeAll(async () => {
    env = await createBotEnv({ approvalTimeoutS: 300 });
    await env.registerBot('box');
    env.writeManifest('box', '  sys.info: {}\n  shell.exec: { binaries: ["echo"], approval: always }\n');
    ({ child, room, botUserId } = await env.startBotInDm('box'));
  }, 60_000);
  afterAll(async () => {
    await env?.cleanup();
  });

  it('is audited as not run and announced in the room after the restart', async () => {
    env.llm.enqueue(toolReply([{ name: 'shell_exec', input: { argv: ['echo', 'dropped'] } }]), textReply('unused'));
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(room, 'run echo dropped');
    const ask = await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx && /Approval needed \[(\w+)\]/.test(bodyOf(e)), 20_000);
    const id = /Approval needed \[(\w+)\]/.exec(bodyOf(ask))?.[1] ?? '';

    const dbFile = path.join(env.home, 'meshpilot.db');
    const before = (() => {
      const db = openDatabase(dbFile);
      try {
        const row = db.prepare('SELECT request_id FROM approvals WHERE id = ?').get(id) as { request_id: string };
        return { requestId: row.request_id, head: new SqliteAuditLog(db).head('box')?.seq ?? 0 };
      } finally {
        db.close();
      }
    })();

    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const idx2 = env.phone.events.length;
    child = env.startBot('box');
    await waitReady(child);
    const note = await env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= idx2 && /restarted while/.test(bodyOf(e)), 20_000);
    expect(note.room_id).toBe(room);
    expect(bodyOf(note)).toContain(`[${id}] shell.exec`);
    expect(bodyOf(note)).toMatch(/did not run; ask again/);
    const seq = Number(/🧾 #(\d+)/.exec(bodyOf(note))?.[1]);

    const db = openDatabase(dbFile);
    try {
      const log = new SqliteAuditLog(db);
      const entry = log.get('box', seq);
      expect(seq).toBeGreaterThan(before.head);
      expect(entry).toMatchObject({
        capability: 'shell.exec', decision: 'rejected', outcome: 'not_run', error_code: 'approval_rejected',
        request_id: before.requestId, actor: `llm:${env.operator.userId}`, args: { argv: ['echo', 'dropped'] },
      });
      // Nothing of that request ran: no `started` entry for it, one entry in all.
      const forRequest = log.tail(200, 'box').filter((e) => e.request_id === before.requestId);
      expect(forRequest.map((e) => e.outcome)).toEqual(['not_run']);
      expect(log.verify('box').ok).toBe(true);
      expect((db.prepare('SELECT state, decided_by FROM approvals WHERE id = ?').get(id) as { state: string; decided_by: string })).toEqual({ state: 'expired', decided_by: 'restart' });
    } finally {
      db.close();
    }
  });
});
