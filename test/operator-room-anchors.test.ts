/** launcher/operator-room.ts roomAnchors: agent chain anchors read from the operator room's state (through the session). */
import { describe, expect, it } from 'vitest';
import { roomAnchors } from '../launcher/operator-room.js';
import type { StateEvent } from '../bots/matrix/index.js';

const HEAD = 'dev.meshpilot.audit_head';
const h = (c: string): string => c.repeat(64);

describe('roomAnchors', () => {
  it('reads agent heads from the room state (mirror keys and device keys), ignoring other and malformed events', async () => {
    const state: StateEvent[] = [
      { type: HEAD, stateKey: 'box@agent', content: { device: 'box', chain: 'agent', seq: 4, hash: h('a') } },
      { type: HEAD, stateKey: 'pc', content: { device: 'pc', agent: { seq: 2, hash: h('b') } } },
      { type: HEAD, stateKey: 'pc@agent', content: { seq: 0, hash: h('c') } },
      { type: HEAD, stateKey: 'other@agent', content: { seq: 9, hash: h('d') } },
      { type: 'm.room.name', stateKey: '', content: { name: 'x' } },
    ];
    const sets: unknown[] = [];
    const source = roomAnchors('!room:example.org', {
      roomState: async (roomId) => {
        expect(roomId).toBe('!room:example.org');
        return state;
      },
      setState: async (...args) => {
        sets.push(args);
        return '$e';
      },
    });
    const got = await source.agentAnchors(['box', 'pc']);
    expect(Object.fromEntries(got)).toEqual({ box: [{ seq: 4, hash: h('a') }], pc: [{ seq: 2, hash: h('b') }] });
    await source.anchor?.('box', { seq: 5, hash: h('e') });
    expect(sets).toEqual([['!room:example.org', HEAD, 'box@agent', expect.objectContaining({ device: 'box', chain: 'agent', seq: 5, hash: h('e') })]]);
  });
});
