/**
 * The audit head anchored in a room (a `dev.meshpilot.audit_head` state event): an anchor the device
 * cannot rewrite later. The anchor already in the room is compared with the chain first: a chain that
 * no longer holds it was rewritten (its hashes recomputed, or it would not verify), and writing the
 * forged head over the anchor would erase the evidence. Then the bot refuses, says so once in the room,
 * and the old anchor stays (the health monitor compares the chain with it and marks the device corrupted).
 */
import type { Logger } from 'pino';
import { AnchorContentSchema, canCompareAnchors, compareWithAnchors } from '../capabilities/audit-anchor.js';
import type { AuditSink } from '../capabilities/audit-sqlite.js';
import { toMpError } from '../capabilities/errors.js';

export const AUDIT_HEAD_EVENT = 'dev.meshpilot.audit_head';

export interface RoomAnchorOptions {
  device: string;
  audit: AuditSink;
  chat: {
    setState(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<void>;
    getState?(roomId: string, type: string, stateKey: string): Promise<Record<string, unknown> | null>;
  };
  logger: Logger;
  /** Tells the room (the refusal). */
  say(roomId: string, text: string): Promise<void>;
}

export class RoomAnchors {
  /** Rooms (and the anchor) where the bot already said it refuses to re-anchor: said once, not on every command. */
  private readonly refusals = new Set<string>();

  constructor(private readonly o: RoomAnchorOptions) {}

  /** `actions`: the audit seqs of the turn the anchor follows (recorded with it). */
  async anchor(roomId: string, actions?: readonly number[]): Promise<void> {
    const head = this.o.audit.head(this.o.device);
    if (!head) return;
    if (this.o.chat.getState && canCompareAnchors(this.o.audit)) {
      let prev: Record<string, unknown> | null;
      try {
        prev = await this.o.chat.getState(roomId, AUDIT_HEAD_EVENT, this.o.device);
      } catch (err) {
        // Unread means uncompared: better a late anchor than one written over evidence.
        this.o.logger.warn({ err: toMpError(err).message }, 'could not read the audit anchor in the room; not re-anchoring this time');
        return;
      }
      const anchored = prev ? AnchorContentSchema.safeParse(prev) : undefined;
      if (anchored && !anchored.success) this.o.logger.warn('the audit anchor in the room is malformed; replacing it');
      if (anchored?.success) {
        const c = compareWithAnchors(this.o.audit, this.o.device, [{ seq: anchored.data.seq, hash: anchored.data.hash }]);
        if (!c.ok) {
          this.o.logger.error({ badSeq: c.badSeq, anchoredSeq: c.anchor.seq, reason: c.reason }, 'the audit chain contradicts its anchor in Matrix: refusing to re-anchor');
          const key = `${roomId} ${c.anchor.seq} ${c.anchor.hash}`;
          if (!this.refusals.has(key)) {
            this.refusals.add(key);
            await this.o.say(roomId, `⚠️ The audit log of ${this.o.device} was rewritten: seq ${c.badSeq} disagrees with the head anchored in this room (${c.reason}). I will not anchor the new head over it; check with \`meshpilot audit verify\` on the launcher.`).catch(() => undefined);
          }
          return;
        }
      }
    }
    const content: Record<string, unknown> = { device: this.o.device, seq: head.seq, hash: head.hash, ts: new Date().toISOString() };
    if (actions) content['actions'] = [...actions];
    await this.o.chat.setState(roomId, AUDIT_HEAD_EVENT, this.o.device, content).catch((err) => {
      this.o.logger.warn({ err: toMpError(err).message }, 'could not record the audit head in the room');
    });
  }
}
