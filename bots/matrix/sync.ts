/**
 * The session's sync loop, on top of the SDK's doSync/processSync (SessionClient.syncOnce/processRaw).
 * The SDK's own loop cannot be stopped while a request is in flight, logs every failure with a stack,
 * and waits a fixed 5-15 s. This one backs off exponentially with jitter, logs one warn line per
 * failure, honours retry_after_ms, stops at once (an in-flight long poll is abandoned and its response
 * discarded, so nothing is lost), and persists the sync token only after a batch has been handed to
 * the callbacks. A session with no stored token does not replay room history: the timeline of its
 * first (initial) sync is skipped; invites and account data are processed.
 */
import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import { errInfo, isUnknownToken } from './errors.js';
import type { SessionClient } from './sdk-patches.js';
import type { SyncStateStore } from './sync-store.js';

export interface Backoff {
  minMs: number;
  maxMs: number;
}

/** The wait before retry `attempt` (1, 2, …): exponential between the bounds, with jitter (half to all of it). */
export function backoffDelay(b: Backoff, attempt: number): number {
  const exp = Math.min(b.maxMs, b.minMs * 2 ** Math.min(20, attempt - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Strips joined rooms' timelines from an initial sync so a fresh session does not replay history. */
function withoutInitialTimelines(raw: unknown): unknown {
  if (!raw || typeof raw !== 'object') return raw;
  const r = raw as { rooms?: { join?: Record<string, { timeline?: { events?: unknown[] } }> } };
  for (const room of Object.values(r.rooms?.join ?? {})) if (room.timeline) room.timeline.events = [];
  return raw;
}

/** Rooms where a sync answer shows a membership event (timeline or state), a gap, or that this account left. */
export function roomsWithMemberChanges(raw: unknown): string[] {
  const rooms = (raw as { rooms?: { join?: Record<string, unknown>; leave?: Record<string, unknown> } } | null)?.rooms;
  const out = Object.keys(rooms?.leave ?? {});
  for (const [roomId, room] of Object.entries(rooms?.join ?? {})) {
    const r = room as { timeline?: { limited?: unknown; events?: unknown }; state?: { events?: unknown } };
    const events = [...(Array.isArray(r.timeline?.events) ? r.timeline.events : []), ...(Array.isArray(r.state?.events) ? r.state.events : [])] as Array<{ type?: unknown }>;
    if (r.timeline?.limited === true || events.some((e) => e?.type === 'm.room.member')) out.push(roomId);
  }
  return out;
}

export interface SyncLoopOptions {
  client: SessionClient;
  storage: Pick<SyncStateStore, 'getSyncToken' | 'setSyncToken'>;
  log: Logger;
  /** Long-poll timeout once caught up. */
  syncTimeoutMs: number;
  backoff: Backoff;
  setStatus(s: 'syncing' | 'reconnecting' | 'unauthorized'): void;
  /** A sync answer about to be processed (the session drops what it makes stale). */
  beforeBatch(raw: unknown): void;
  /** A batch has been handed to the callbacks (the first one lets start() return). */
  afterBatch(): void;
  /** The newest sync token (the session saves it again on stop). */
  onToken(token: string | null): void;
}

/** Syncs until `signal` aborts or the homeserver rejects the access token. */
export async function runSyncLoop(o: SyncLoopOptions, signal: AbortSignal): Promise<void> {
  const { client, log } = o;
  let token = (await Promise.resolve(o.storage.getSyncToken())) ?? null;
  o.onToken(token);
  let failures = 0;
  const stopped = new Promise<'stopped'>((resolve) => signal.addEventListener('abort', () => resolve('stopped'), { once: true }));
  let caughtUp = false;
  while (!signal.aborted) {
    let raw: unknown;
    // The first sync after (re)start must not long-poll: start() waits for it, and with nothing new
    // a long poll would hold a restarted bot back for the whole timeout.
    // An initial sync (no token) returns at once whatever the timeout, and Synapse caches /sync answers for
    // 2 min keyed by (user, device, since, filter, timeout): a session that lost its store and starts
    // again on the same token would get the earlier initial sync's old next_batch and replay every
    // message since. A random timeout makes that key its own.
    client.syncingTimeout = caughtUp ? o.syncTimeoutMs : token === null ? randomInt(1, 5000) : 0;
    try {
      raw = await Promise.race([client.syncOnce(token), stopped]);
    } catch (err) {
      if (signal.aborted) break;
      const i = errInfo(err);
      if (isUnknownToken(i)) {
        o.setStatus('unauthorized');
        log.error({ errcode: i.errcode }, 'Matrix homeserver rejected the access token; syncing stopped');
        return;
      }
      failures += 1;
      o.setStatus('reconnecting');
      const delay = i.retryAfterMs !== undefined ? Math.min(o.backoff.maxMs, Math.max(i.retryAfterMs, 50)) : backoffDelay(o.backoff, failures);
      log.warn({ error: i.message, attempt: failures, retryInMs: delay }, 'Matrix sync failed; retrying');
      await sleep(delay, signal);
      continue;
    }
    // stopped while the request was in flight: drop the response unprocessed, the token stays where it was
    if (raw === 'stopped' || signal.aborted) break;
    if (failures > 0) log.info({ attempts: failures }, 'Matrix sync reconnected');
    failures = 0;
    o.setStatus('syncing');
    const next = (raw as { next_batch?: unknown } | null)?.next_batch;
    o.beforeBatch(raw);
    try {
      await client.processRaw(token === null ? withoutInitialTimelines(raw) : raw);
    } catch (err) {
      log.warn({ error: errInfo(err).message }, 'Matrix sync batch could not be processed');
    }
    if (typeof next === 'string' && next.length > 0 && next.length < 1024) {
      token = next;
      o.onToken(next);
      await Promise.resolve(o.storage.setSyncToken(next));
    }
    caughtUp = true;
    o.afterBatch();
  }
}
