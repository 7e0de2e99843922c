/**
 * ApprovalManager on its own: the stated expiry, and what a restart hands back about the requests
 * that were waiting.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ApprovalManager, expiresIn } from '../bots/approvals.js';
import { openDatabase } from '../capabilities/db.js';
import { tempDir } from './helpers/tmp.js';

function manager(timeoutMs: number, posted: string[] = []) {
  const db = openDatabase(path.join(tempDir(), 'a.db'));
  const m = new ApprovalManager(db, {
    device: 'box', timeoutMs, isOperator: (u) => u === '@op:x',
    poster: { post: async (roomId, plain) => { posted.push(plain); return { roomId, eventId: `$e${posted.length}` }; } },
  });
  return { db, m, posted };
}

const req = { requestId: 'r-1', device: 'box', capability: 'shell.exec', args: { argv: ['echo', 'hi'] }, actor: '@op:x', risk: 'exec' as const, reason: 'approval: always' };

describe('approval expiry as stated in the request', () => {
  it('a 5-s timeout says "expires in 5 s", not "0 min"', async () => {
    const { m, posted } = manager(5_000);
    const verdict = m.hookFor('!r:x')(req);
    await new Promise((r) => setTimeout(r, 20));
    expect(posted[0]).toContain('(expires in 5 s)');
    expect(posted[0]).not.toContain('0 min');
    m.rejectAll('test');
    await verdict;
  });

  it('seconds under two minutes, whole minutes from two minutes on', () => {
    expect(expiresIn(5_000)).toBe('5 s');
    expect(expiresIn(90_000)).toBe('90 s');
    expect(expiresIn(119_000)).toBe('119 s');
    expect(expiresIn(120_000)).toBe('2 min');
    expect(expiresIn(300_000)).toBe('5 min');
    expect(expiresIn(400)).toBe('1 s');
  });
});

describe('a restart drops what was pending', () => {
  it('returns each dropped request (room, request id, capability, args) once, and marks it expired', async () => {
    const { db, m } = manager(60_000);
    void m.hookFor('!r:x')(req);
    await new Promise((r) => setTimeout(r, 20));
    // A new manager over the same database: what a restarted bot sees.
    const after = new ApprovalManager(db, { device: 'box', timeoutMs: 60_000, isOperator: () => true, poster: { post: async (roomId) => ({ roomId, eventId: '$x' }) } });
    const dropped = after.expireStale();
    expect(dropped).toHaveLength(1);
    expect(dropped[0]).toMatchObject({ roomId: '!r:x', requestId: 'r-1', capability: 'shell.exec', args: { argv: ['echo', 'hi'] }, requester: '@op:x', eventId: '$e1' });
    expect(after.stateOf('r-1')).toBe('expired');
    expect(after.expireStale()).toEqual([]);
  });
});
