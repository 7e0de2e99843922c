/**
 * RoomGuard on a fake chat: where the device bot may post when a non-operator is in a room.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { RoomGuard, type GuardChat, type RoomMember } from '../bots/room-guard.js';

const BOT = '@bot:x';
const OP = '@op:x';

function fakeChat(rooms: Record<string, RoomMember[]>): GuardChat & { sent: Array<[string, string]>; created: string[]; dm: string | undefined; failMembers: boolean } {
  const chat = {
    userId: BOT,
    sent: [] as Array<[string, string]>,
    created: [] as string[],
    dm: undefined as string | undefined,
    failMembers: false,
    async roomMembers(roomId: string) {
      await new Promise((r) => setTimeout(r, 5));
      if (chat.failMembers) throw new Error('homeserver unreachable');
      return rooms[roomId] ?? [];
    },
    async sendText(roomId: string, text: string) {
      chat.sent.push([roomId, text]);
      return `$${chat.sent.length}`;
    },
    async createDm(userId: string) {
      await new Promise((r) => setTimeout(r, 5));
      const id = `!new${chat.created.length + 1}:x`;
      chat.created.push(id);
      rooms[id] = [{ userId: BOT, membership: 'join' }, { userId, membership: 'invite' }];
      chat.dm = id;
      return id;
    },
    async findDm() {
      return chat.dm;
    },
  };
  return chat;
}

const guardFor = (chat: GuardChat) => new RoomGuard({ device: 'box', chat, isOperator: (u) => u === OP, operators: () => [OP], logger: pino({ level: 'silent' }) });

describe('room guard', () => {
  it('a room of operators (and invited operators) is used as is; nothing is said', async () => {
    const chat = fakeChat({ '!dm:x': [{ userId: BOT, membership: 'join' }, { userId: OP, membership: 'invite' }, { userId: '@gone:x', membership: 'leave' }] });
    expect(await guardFor(chat).roomFor('!dm:x', OP)).toBe('!dm:x');
    expect(chat.sent).toEqual([]);
  });

  it('an invited stranger: one new operators-only DM even for parallel posts, the reason said once in each room', async () => {
    const rooms = { '!dm:x': [{ userId: BOT, membership: 'join' }, { userId: OP, membership: 'join' }, { userId: '@eve:x', membership: 'invite' }] };
    const chat = fakeChat(rooms);
    chat.dm = '!dm:x'; // the operator's DM is the tainted one
    const guard = guardFor(chat);
    const targets = await Promise.all([guard.roomFor('!dm:x', OP), guard.roomFor('!dm:x'), guard.roomFor('!dm:x', OP)]);
    expect(new Set(targets)).toEqual(new Set(['!new1:x']));
    expect(chat.created).toEqual(['!new1:x']);
    expect(await guard.roomFor('!dm:x', OP)).toBe('!new1:x');
    expect(chat.created).toHaveLength(1);
    const why = chat.sent.filter(([r]) => r === '!dm:x');
    expect(why).toHaveLength(1);
    expect(why[0]?.[1]).toMatch(/@eve:x is in this room and not an operator of box/);
    expect(chat.sent.filter(([r]) => r === '!new1:x')).toHaveLength(1);
  });

  it('reuses the operator\'s other DM when it holds only operators', async () => {
    const chat = fakeChat({
      '!dm:x': [{ userId: BOT, membership: 'join' }, { userId: OP, membership: 'join' }, { userId: '@eve:x', membership: 'join' }],
      '!other:x': [{ userId: BOT, membership: 'join' }, { userId: OP, membership: 'join' }],
    });
    chat.dm = '!other:x';
    expect(await guardFor(chat).roomFor('!dm:x', OP)).toBe('!other:x');
    expect(chat.created).toEqual([]);
  });

  it('the stranger gone: the room is used again; members that cannot be read: nothing is posted', async () => {
    const rooms: Record<string, RoomMember[]> = { '!dm:x': [{ userId: BOT, membership: 'join' }, { userId: OP, membership: 'join' }, { userId: '@eve:x', membership: 'join' }] };
    const chat = fakeChat(rooms);
    const guard = guardFor(chat);
    expect(await guard.roomFor('!dm:x', OP)).not.toBe('!dm:x');
    rooms['!dm:x'] = rooms['!dm:x']!.map((m) => (m.userId === '@eve:x' ? { ...m, membership: 'leave' } : m));
    expect(await guard.roomFor('!dm:x', OP)).toBe('!dm:x');
    chat.failMembers = true;
    await expect(guard.roomFor('!dm:x', OP)).rejects.toThrow(/unreachable/);
  });
});
