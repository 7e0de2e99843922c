/**
 * Where the device bot may speak. A DM with an operator stops being private the moment someone else
 * is invited into it: that person would read every later result and approval request (and, with
 * encryption, get the room keys). So before anything is posted, the room's members (joined and
 * invited) are checked; a room holding a non-operator is left for a room that holds only operators
 * (the operator's other DM with the bot, else a new one), and the bot says once, in each, why.
 * A user below operator level whom the device grants something (capabilities/levels.ts) has a room of
 * their own: one where they are the only member besides the bot.
 */
import type { Logger } from 'pino';
import { MeshpilotError, toMpError } from '../capabilities/errors.js';

export interface RoomMember {
  userId: string;
  /** join | invite | leave | ban | knock */
  membership: string;
}

/** What the guard needs of the chat (bots/device-bot.ts ChatPort, unguarded). */
export interface GuardChat {
  readonly userId: string;
  roomMembers(roomId: string): Promise<readonly RoomMember[]>;
  sendText(roomId: string, text: string): Promise<string>;
  createDm(userId: string, opts: { name: string; topic: string }): Promise<string>;
  findDm(userId: string): Promise<string | undefined>;
}

export interface RoomGuardOptions {
  device: string;
  chat: GuardChat;
  isOperator(userId: string): boolean;
  /** Whether the user may talk to this bot at all (operators, and users the device grants something). */
  mayTalk?(userId: string): boolean;
  operators(): string[];
  logger: Logger;
}

export class RoomGuard {
  /** Room with a non-operator → the operators-only room the bot went on in. */
  private readonly redirects = new Map<string, string>();
  /** Rooms already told why the bot no longer posts there. */
  private readonly told = new Set<string>();
  /** One redirect at a time per room (a reply and an approval request must not open two DMs). */
  private readonly inFlight = new Map<string, Promise<string>>();

  constructor(private readonly o: RoomGuardOptions) {}

  /** The non-operators joined to or invited into a room (the bot itself excepted). */
  async outsiders(roomId: string): Promise<string[]> {
    const members = await this.o.chat.roomMembers(roomId);
    const others = members.filter((m) => (m.membership === 'join' || m.membership === 'invite') && m.userId !== this.o.chat.userId);
    const outsiders = others.filter((m) => !this.o.isOperator(m.userId)).map((m) => m.userId);
    // A citizen's own room: they are alone in it with the bot.
    if (others.length === 1 && outsiders.length === 1 && this.o.mayTalk?.(outsiders[0]!)) return [];
    return outsiders;
  }

  /**
   * `roomId` when only operators are in it; else the operators-only room to post in instead (with
   * `operator`, preferably that operator's). Throws when the members cannot be read: nothing is
   * posted into a room the bot could not check.
   */
  async roomFor(roomId: string, operator?: string): Promise<string> {
    const outsiders = await this.outsiders(roomId);
    if (outsiders.length === 0) {
      this.told.delete(roomId); // the stranger is gone: a later one is explained again
      return roomId;
    }
    const running = this.inFlight.get(roomId);
    if (running) return running;
    const p = this.redirect(roomId, outsiders, operator).finally(() => this.inFlight.delete(roomId));
    this.inFlight.set(roomId, p);
    return p;
  }

  private async redirect(roomId: string, outsiders: string[], operator: string | undefined): Promise<string> {
    const who = `${outsiders.slice(0, 3).join(', ')}${outsiders.length > 3 ? ` and ${outsiders.length - 3} more` : ''}`;
    if (!this.told.has(roomId)) {
      this.told.add(roomId);
      this.o.logger.warn({ roomId, outsiders }, 'a non-operator is in the room: results go to an operators-only room');
      await this.o.chat.sendText(roomId, `🔒 ${who} ${outsiders.length > 1 ? 'are' : 'is'} in this room and not an operator of ${this.o.device}, so I no longer post results, approval requests or keys here. I go on in a room that holds only operators.`)
        .catch((err) => this.o.logger.warn({ err: toMpError(err).message }, 'could not say why in the room'));
    }
    const known = this.redirects.get(roomId);
    if (known && known !== roomId && (await this.clean(known))) return known;
    const op = operator && this.o.isOperator(operator) ? operator : (await this.firstOperator(roomId));
    if (!op) throw new MeshpilotError('policy_denied', `a non-operator is in room ${roomId} and there is no operator to continue with elsewhere`);
    const dm = await this.o.chat.findDm(op);
    let target: string;
    let fresh = false;
    if (dm && dm !== roomId && (await this.clean(dm))) {
      target = dm;
    } else {
      target = await this.o.chat.createDm(op, { name: `🖥 ${this.o.device}`, topic: `meshpilot device ${this.o.device} · operators only` });
      fresh = true;
    }
    this.redirects.set(roomId, target);
    await this.o.chat.sendText(target, `🔒 ${fresh ? 'New room: ' : ''}${who} ${outsiders.length > 1 ? 'were' : 'was'} invited into our other room, so I go on here, where only operators are.`);
    return target;
  }

  private async clean(roomId: string): Promise<boolean> {
    try {
      return (await this.outsiders(roomId)).length === 0;
    } catch {
      return false;
    }
  }

  private async firstOperator(roomId: string): Promise<string | undefined> {
    const members = await this.o.chat.roomMembers(roomId).catch(() => []);
    return members.find((m) => m.membership === 'join' && this.o.isOperator(m.userId))?.userId ?? this.o.operators()[0];
  }
}
