/**
 * What comes from the homeserver, validated and normalised: the zod schemas of the events a session
 * handles, their conversion into meshpilot's typed events, and the checks on ids and sizes that go out.
 */
import { z } from 'zod';
import { MeshpilotError } from '../../capabilities/errors.js';
import type { MatrixInvite, MatrixMessage, MatrixReaction, MediaInfo, RelatesTo } from './types.js';

const MAX_BODY_CHARS = 64 * 1024;
export const MAX_TEXT_SEND = 60_000;

export const roomIdRe = /^![^\s:]+:\S+$/;
export const userIdRe = /^@[^\s:]+:\S+$/;
export const mxcRe = /^mxc:\/\/([A-Za-z0-9.\-:[\]]{1,255})\/([A-Za-z0-9_-]{1,255})$/;

const relatesSchema = z
  .looseObject({
    rel_type: z.string().max(255).optional(),
    event_id: z.string().max(255).optional(),
    key: z.string().max(255).optional(),
    'm.in_reply_to': z.looseObject({ event_id: z.string().max(255) }).optional(),
  })
  .optional();

/** An encrypted attachment (spec: EncryptedFile), as sent in `content.file` in encrypted rooms. */
const encryptedFileSchema = z.looseObject({
  url: z.string().regex(mxcRe).max(1024),
  key: z.looseObject({ kty: z.literal('oct'), alg: z.literal('A256CTR'), k: z.string().max(256), key_ops: z.array(z.string().max(32)).max(8), ext: z.boolean() }),
  iv: z.string().max(64),
  hashes: z.looseObject({ sha256: z.string().max(128) }),
  v: z.string().max(16),
});
export type EncryptedFile = z.infer<typeof encryptedFileSchema>;

const messageEventSchema = z.looseObject({
  event_id: z.string().min(1).max(255),
  sender: z.string().regex(userIdRe).max(255),
  origin_server_ts: z.number().optional(),
  content: z.looseObject({
    msgtype: z.string().min(1).max(255),
    body: z.string().max(MAX_BODY_CHARS),
    format: z.string().max(255).optional(),
    formatted_body: z.string().max(MAX_BODY_CHARS * 2).optional(),
    url: z.string().max(1024).optional(),
    file: encryptedFileSchema.optional(),
    filename: z.string().max(1024).optional(),
    info: z
      .looseObject({
        mimetype: z.string().max(255).optional(),
        size: z.number().int().nonnegative().optional(),
        duration: z.number().nonnegative().optional(),
      })
      .optional(),
    'org.matrix.msc3245.voice': z.unknown().optional(),
    'm.relates_to': relatesSchema,
  }),
});

const reactionEventSchema = z.looseObject({
  event_id: z.string().min(1).max(255),
  sender: z.string().regex(userIdRe).max(255),
  content: z.looseObject({
    'm.relates_to': z.looseObject({ rel_type: z.literal('m.annotation'), event_id: z.string().min(1).max(255), key: z.string().min(1).max(255) }),
  }),
});

const inviteEventSchema = z.looseObject({
  sender: z.string().regex(userIdRe).max(255),
  content: z.looseObject({ membership: z.literal('invite'), is_direct: z.boolean().optional() }),
});

/** m.direct account data: user id → DM room ids. */
export const mDirectSchema = z.record(z.string().max(255), z.array(z.string().max(255)).max(1000));

// ---- normalisation -------------------------------------------------------------------------------

/**
 * An m.room.message as meshpilot's MatrixMessage (undefined: malformed or redacted). `file`: the key
 * material of an encrypted attachment, for the media downloader.
 */
export function toMessage(roomId: string, ev: unknown): { message: MatrixMessage; file?: EncryptedFile } | undefined {
  const p = messageEventSchema.safeParse(ev);
  if (!p.success) return undefined;
  const e = p.data;
  const c = e.content;
  const m: MatrixMessage = { roomId, eventId: e.event_id, sender: e.sender, ts: e.origin_server_ts ?? Date.now(), msgtype: c.msgtype, body: c.body, isVoice: c['org.matrix.msc3245.voice'] !== undefined };
  if (c.format === 'org.matrix.custom.html' && c.formatted_body !== undefined) m.formattedBody = c.formatted_body;
  let file: EncryptedFile | undefined;
  if (c.url !== undefined && mxcRe.test(c.url)) m.mxc = c.url;
  else if (c.file) {
    m.mxc = c.file.url;
    file = c.file;
  }
  if (c.filename !== undefined) m.filename = c.filename;
  if (c.info) {
    const info: MediaInfo = {};
    if (c.info.mimetype !== undefined) info.mimetype = c.info.mimetype;
    if (c.info.size !== undefined) info.size = c.info.size;
    if (c.info.duration !== undefined) info.duration = c.info.duration;
    m.info = info;
  }
  const rel = c['m.relates_to'];
  if (rel) {
    const r: RelatesTo = {};
    if (rel.rel_type !== undefined) r.relType = rel.rel_type;
    if (rel.event_id !== undefined) r.eventId = rel.event_id;
    if (rel.key !== undefined) r.key = rel.key;
    if (rel['m.in_reply_to']) r.inReplyTo = rel['m.in_reply_to'].event_id;
    m.relatesTo = r;
  }
  return file ? { message: m, file } : { message: m };
}

/** An m.reaction (annotation) as MatrixReaction, or undefined. */
export function toReaction(roomId: string, ev: unknown): MatrixReaction | undefined {
  const p = reactionEventSchema.safeParse(ev);
  if (!p.success) return undefined;
  const rel = p.data.content['m.relates_to'];
  return { roomId, eventId: p.data.event_id, sender: p.data.sender, key: rel.key, relatesToEventId: rel.event_id };
}

/** An invite to this account as MatrixInvite, or undefined. */
export function toInvite(roomId: string, ev: unknown): MatrixInvite | undefined {
  const p = inviteEventSchema.safeParse(ev);
  return p.success ? { roomId, sender: p.data.sender, isDirect: p.data.content.is_direct === true } : undefined;
}

// ---- what goes out -------------------------------------------------------------------------------

export function checkRoom(roomId: string): void {
  if (!roomIdRe.test(roomId) || roomId.length > 255) throw new MeshpilotError('usage', `Not a Matrix room id: ${roomId.slice(0, 80)}`);
}

export function checkUser(u: string): void {
  if (!userIdRe.test(u) || u.length > 255) throw new MeshpilotError('usage', `Not a Matrix user id: ${u.slice(0, 80)}`);
}

export function checkText(t: string): void {
  if (t.length > MAX_TEXT_SEND) throw new MeshpilotError('output_limit', `Message too long for Matrix (${t.length} characters, limit ${MAX_TEXT_SEND})`);
}

/** A room's full state (GET /rooms/{roomId}/state). */
export const stateListSchema = z
  .array(z.looseObject({ type: z.string().max(255), state_key: z.string().max(255).optional(), content: z.record(z.string(), z.unknown()) }))
  .max(100_000);
