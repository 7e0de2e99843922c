/**
 * Reads a device bot's audit anchors from Matrix: the `dev.meshpilot.audit_head` state (state_key =
 * device) of each room the bot's account has joined, as that account (keys/<device>/matrix.json).
 * The newest by seq wins. Used by `meshpilot audit verify`, `doctor`, `up` and the health monitor.
 *
 * Bounded: at most MAX_ROOMS rooms, a few requests at a time, small answers, a timeout per request.
 * Errors are values: the caller must be able to say "anchors not checked" rather than "ok".
 */
import { existsSync } from 'node:fs';
import { AnchorContentSchema, compareWithAnchors, type AnchoredChain } from '../capabilities/audit-anchor.js';
import type { AuditHead } from '../capabilities/audit.js';
import { layout } from '../capabilities/home.js';
import { readCredentials } from '../bots/credentials.js';
import { HomeserverApi } from '../bots/matrix/homeserver.js';
import { MeshpilotError } from '../capabilities/errors.js';
import { loadConfig } from '../capabilities/config.js';

/** Same as bots/device-bot.ts AUDIT_HEAD_EVENT (not imported: that module pulls the bot's dependencies in). */
export const AUDIT_HEAD_EVENT = 'dev.meshpilot.audit_head';
const MAX_ROOMS = 200;
const PARALLEL = 4;
const TIMEOUT_MS = 10_000;

export interface DeviceAnchor extends AuditHead {
  roomId: string;
  ts?: string;
}

export type AnchorRead =
  /** anchor null: the bot's rooms hold no anchor for this device (yet). */
  | { status: 'read'; anchor: DeviceAnchor | null; rooms: number }
  /** Nothing to read with: no bot account, or no homeserver configured. */
  | { status: 'no_account'; message: string }
  /** The homeserver could not be asked, or refused the bot's token. */
  | { status: 'unreadable'; message: string };

class ReadError extends Error {}

/**
 * A failed read as what it means here: the homeserver refused the token or could not be asked
 * (ReadError: anchors not checked), or only this room could not be read (undefined: skip it).
 */
function readFailure(err: unknown, whole: boolean): ReadError | undefined {
  if (!(err instanceof MeshpilotError)) return undefined;
  if (err.code === 'auth' || (whole && err.code === 'permission')) return new ReadError(`the homeserver refused the bot's access token (${err.message})`);
  if (whole || err.code === 'unreachable') return new ReadError(err.message);
  return undefined;
}

/** The homeserver URL for a device's bot: its credentials', else the config's. */
function homeserverFor(home: string, credsUrl: string | undefined): string | undefined {
  if (credsUrl) return credsUrl;
  const c = loadConfig(layout(home).config);
  return c.ok ? c.config.matrix.homeserver_url : undefined;
}

/** Reads the newest anchor of `device` in the rooms its bot account has joined. */
export async function readDeviceAnchor(home: string, device: string): Promise<AnchorRead> {
  let creds;
  try {
    creds = readCredentials(layout(home).keys, device);
  } catch {
    creds = undefined; // an unreadable matrix.json is the same as none here; doctor reports it
  }
  if (!creds) return { status: 'no_account', message: `${device} has no Matrix bot account` };
  const url = homeserverFor(home, creds.homeserverUrl);
  if (!url) return { status: 'no_account', message: 'no homeserver configured' };
  const api = new HomeserverApi(url, creds.accessToken);
  try {
    const list = (await api.joinedRooms({ timeoutMs: TIMEOUT_MS }).catch((err: unknown) => { throw readFailure(err, true) ?? err; })).slice(0, MAX_ROOMS);
    let best: DeviceAnchor | null = null;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < list.length) {
        const roomId = list[next++]!;
        let content: Record<string, unknown> | null;
        try {
          content = await api.stateEvent(roomId, AUDIT_HEAD_EVENT, device, { timeoutMs: TIMEOUT_MS });
        } catch (err) {
          const f = readFailure(err, false);
          if (f) throw f;
          continue; // this room cannot be read (left, forbidden): no anchor from it
        }
        if (!content) continue; // no anchor in this room
        const c = AnchorContentSchema.safeParse(content);
        if (!c.success || c.data.device !== device) continue;
        if (!best || c.data.seq > best.seq) best = { seq: c.data.seq, hash: c.data.hash, roomId, ...(c.data.ts ? { ts: c.data.ts } : {}) };
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, list.length) }, worker));
    return { status: 'read', anchor: best, rooms: list.length };
  } catch (err) {
    if (err instanceof ReadError) return { status: 'unreadable', message: err.message };
    throw err;
  }
}

export type ChainAnchorCheck =
  | { kind: 'matched'; anchor: DeviceAnchor }
  | { kind: 'mismatch'; anchor: DeviceAnchor; badSeq: number; reason: string }
  /** Anchors may exist but could not be read: never to be reported as ok. */
  | { kind: 'unchecked'; message: string }
  /** Nothing to compare with: Matrix is not configured, the key is an agent mirror, or no anchor was written yet. */
  | { kind: 'none'; message: string };

/**
 * Compares a device's controller chain with the newest anchor its bot wrote in Matrix.
 * Agent mirrors (`<device>@agent`) are anchored in the operator room and checked by the health monitor.
 */
export async function checkChainAnchors(home: string, chain: AnchoredChain, device: string): Promise<ChainAnchorCheck> {
  if (device.includes('@')) return { kind: 'none', message: 'agent mirror' };
  const read = await readDeviceAnchor(home, device);
  if (read.status === 'no_account') {
    // Without a config there is no Matrix, so no bot ever anchored anything.
    return existsSync(layout(home).config) ? { kind: 'unchecked', message: read.message } : { kind: 'none', message: 'Matrix is not configured' };
  }
  if (read.status === 'unreadable') return { kind: 'unchecked', message: read.message };
  if (!read.anchor) return { kind: 'none', message: `no anchor in the bot's ${read.rooms} rooms yet` };
  const c = compareWithAnchors(chain, device, [read.anchor]);
  return c.ok ? { kind: 'matched', anchor: read.anchor } : { kind: 'mismatch', anchor: read.anchor, badSeq: c.badSeq, reason: c.reason };
}
