/**
 * The supervisor <-> bot IPC protocol (bots/ipc.ts), declared once for both sides: the reconciled
 * bounds, and what each side accepts.
 */
import { describe, expect, it } from 'vitest';
import { HEARTBEAT_MS, heartbeatIntervalFor, MAX_IPC_MESSAGE_CHARS, ParentMessageSchema, parseChildMessage } from '../bots/ipc.js';

describe('IPC protocol', () => {
  it('asks a quarter of the heartbeat timeout, within 100 ms .. 10 min', () => {
    expect(heartbeatIntervalFor(60_000)).toBe(15_000);
    expect(heartbeatIntervalFor(800)).toBe(200);
    expect(heartbeatIntervalFor(40)).toBe(HEARTBEAT_MS.min);
    expect(heartbeatIntervalFor(24 * 3600_000)).toBe(HEARTBEAT_MS.max);
    for (const t of [1, 399, 400, 60_000, 2_400_000, 1e9]) {
      expect(ParentMessageSchema.safeParse({ type: 'init', device: 'a', heartbeatMs: heartbeatIntervalFor(t) }).success).toBe(true);
    }
  });

  it('init: a valid device name, heartbeatMs within bounds, nothing else', () => {
    expect(ParentMessageSchema.parse({ type: 'init', device: 'web-1', heartbeatMs: 1000 })).toEqual({ type: 'init', device: 'web-1', heartbeatMs: 1000 });
    expect(ParentMessageSchema.safeParse({ type: 'shutdown' }).success).toBe(true);
    for (const bad of [
      { type: 'init', device: '-x', heartbeatMs: 1000 },
      { type: 'init', device: 'a', heartbeatMs: 99 },
      { type: 'init', device: 'a', heartbeatMs: 600_001 },
      { type: 'init', device: 'a' },
      { type: 'init', device: 'a', heartbeatMs: 1000, extra: 1 },
      { type: 'hello' },
    ]) expect(ParentMessageSchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
  });

  it('child messages: bounded first, unknown keys stripped, long texts cut', () => {
    const hb = parseChildMessage({ type: 'heartbeat', busy: false, auditHead: { seq: 3, hash: 'a'.repeat(64) }, later: 'field' });
    expect(hb).toEqual({ ok: true, msg: { type: 'heartbeat', busy: false, auditHead: { seq: 3, hash: 'a'.repeat(64) } } });
    const fatal = parseChildMessage({ type: 'fatal', code: 'config', message: 'x'.repeat(5000) });
    expect(fatal.ok && fatal.msg.type === 'fatal' && fatal.msg.message.length).toBe(2001);
    const big = parseChildMessage({ type: 'log', level: 'info', msg: 'x'.repeat(MAX_IPC_MESSAGE_CHARS) });
    expect(big).toMatchObject({ ok: false, reason: expect.stringMatching(/limit/) });
    expect(parseChildMessage({ type: 'heartbeat' }).ok).toBe(false);
  });
});
