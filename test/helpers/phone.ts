/**
 * The operator's phone in tests: the real matrix-js-sdk client, against the homeserver fixture.
 * With `{ crypto: true }` it runs matrix-js-sdk's Rust crypto (WebAssembly, in-memory store), like Element.
 */
import type { ClientEvent, Homeserver } from '../fixtures/homeserver.js';

type JsSdk = typeof import('matrix-js-sdk');
export type Phone = import('matrix-js-sdk').MatrixClient;
type JsEvent = import('matrix-js-sdk').MatrixEvent;

const noop = (): void => undefined;
type JsLogger = NonNullable<Parameters<JsSdk['createClient']>[0]['logger']>;
const silent: JsLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, getChild: () => silent } as unknown as JsLogger;

export interface PhoneOptions {
  /** Start matrix-js-sdk's Rust crypto (in-memory store) before syncing, so the phone reads and sends encrypted messages. */
  crypto?: boolean;
}

export interface PhoneHandle {
  client: Phone;
  /**
   * Timeline events as the person sees them. Without crypto: as received. With crypto: encrypted ones
   * appear once decrypted, with their clear `type` and `content` (ones that cannot be decrypted are left out).
   */
  events: ClientEvent[];
  /** Timeline events as they came over the wire (m.room.encrypted stays encrypted). */
  raw: ClientEvent[];
  waitFor(pred: (e: ClientEvent) => boolean, ms?: number): Promise<ClientEvent>;
  stop(): void;
}

export async function startPhone(
  hs: Pick<Homeserver, 'url'>,
  user: { userId: string; accessToken: string; deviceId: string },
  opts: PhoneOptions = {},
): Promise<PhoneHandle> {
  const sdk: JsSdk = await import('matrix-js-sdk');
  const client = sdk.createClient({ baseUrl: hs.url, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: silent });
  const events: ClientEvent[] = [];
  const raw: ClientEvent[] = [];
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const l of [...listeners]) l();
  };
  const decryptedIds = new Set<string>();
  const pushDecrypted = (ev: JsEvent): void => {
    if (ev.isDecryptionFailure() || ev.getClearContent() === null) return;
    const id = ev.getId();
    if (id !== undefined) {
      if (decryptedIds.has(id)) return;
      decryptedIds.add(id);
    }
    events.push(ev.getEffectiveEvent() as unknown as ClientEvent);
    notify();
  };
  client.on(sdk.RoomEvent.Timeline, (ev: JsEvent) => {
    raw.push(ev.event as ClientEvent);
    if (opts.crypto && ev.getWireType() === 'm.room.encrypted') pushDecrypted(ev); // no-op until decrypted
    else events.push(ev.event as ClientEvent);
    notify();
  });
  // Decryption is asynchronous (and retried when the room key arrives later): each success lands here.
  if (opts.crypto) client.on(sdk.MatrixEventEvent.Decrypted, (ev: JsEvent) => pushDecrypted(ev));
  // Accept DM invites like a person tapping "accept".
  client.on(sdk.RoomMemberEvent.Membership, (_ev: unknown, member: { userId: string; membership?: string; roomId: string }) => {
    if (member.userId === user.userId && member.membership === 'invite') void client.joinRoom(member.roomId).catch(() => undefined);
  });
  const prepared = new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('matrix-js-sdk did not reach PREPARED')), 15_000);
    client.on(sdk.ClientEvent.Sync, (state: string) => {
      if (state === 'PREPARED') { clearTimeout(t); resolve(); }
    });
  });
  if (opts.crypto) {
    await client.initRustCrypto({ useIndexedDB: false });
    await quietCrypto();
  }
  await client.startClient({ initialSyncLimit: 10 });
  await prepared;
  const waitFor = (pred: (e: ClientEvent) => boolean, ms = 15_000): Promise<ClientEvent> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = events.find(pred);
        if (hit) { listeners.delete(check); clearTimeout(t); resolve(hit); }
      };
      const t = setTimeout(() => { listeners.delete(check); reject(new Error(`phone did not see the expected event (${events.length} events seen: ${events.slice(-5).map((e) => `${e.type}/${e.sender}`).join(", ")}; ${raw.length} on the wire)`)); }, ms);
      listeners.add(check);
      check();
    });
  return { client, events, raw, waitFor, stop: () => client.stopClient() };
}

/**
 * initRustCrypto turns the Rust SDK's tracing on at debug level, and the crypto code logs through
 * matrix-js-sdk's global (loglevel) logger and per-room children of it set to debug, rather than the
 * client's logger: keep warnings and errors only, so test output stays readable. Children copy the root's
 * methodFactory whenever they are fetched, so filtering there covers them too.
 */
let loggerQuieted = false;
async function quietCrypto(): Promise<void> {
  // every initRustCrypto turns tracing back on at debug level
  const wasm = await import('@matrix-org/matrix-sdk-crypto-wasm');
  new wasm.Tracing(wasm.LoggerLevel.Warn).turnOn();
  if (loggerQuieted) return;
  loggerQuieted = true;
  type Factory = (method: string, level: unknown, name: unknown) => (...args: unknown[]) => void;
  const { logger } = await import('matrix-js-sdk/lib/logger.js');
  const root = logger as unknown as { methodFactory: Factory; rebuild(): void }; // loglevel's API; the SDK's type hides it
  const original = root.methodFactory;
  root.methodFactory = (method, level, name) => (method === 'warn' || method === 'error' ? original(method, level, name) : noop);
  root.rebuild();
}

/**
 * Resolves once the phone's crypto knows a device of userId (fetching keys through /keys/query as the
 * SDK decides, e.g. after a device_lists change); rejects after ms.
 */
export async function waitForDeviceKeys(phone: PhoneHandle, userId: string, deviceId: string, ms = 15_000): Promise<void> {
  const crypto = phone.client.getCrypto();
  if (!crypto) throw new Error('phone was started without crypto');
  const deadline = Date.now() + ms;
  for (;;) {
    const devices = await crypto.getUserDeviceInfo([userId], true);
    if (devices.get(userId)?.has(deviceId)) return;
    if (Date.now() > deadline) throw new Error(`phone does not know device ${deviceId} of ${userId} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function bodyOf(e: ClientEvent): string {
  const c = e.content as { body?: unknown };
  return typeof c.body === 'string' ? c.body : '';
}
