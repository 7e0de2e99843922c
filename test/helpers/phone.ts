/**
 * The operator's phone in tests: the real matrix-js-sdk client, against the homeserver fixture.
 */
import type { ClientEvent, Homeserver } from '../fixtures/homeserver.js';

type JsSdk = typeof import('matrix-js-sdk');
export type Phone = import('matrix-js-sdk').MatrixClient;

const noop = (): void => undefined;
type JsLogger = NonNullable<Parameters<JsSdk['createClient']>[0]['logger']>;
const silent: JsLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, getChild: () => silent } as unknown as JsLogger;

export interface PhoneHandle {
  client: Phone;
  events: ClientEvent[];
  waitFor(pred: (e: ClientEvent) => boolean, ms?: number): Promise<ClientEvent>;
  stop(): void;
}

export async function startPhone(hs: Pick<Homeserver, "url">, user: { userId: string; accessToken: string; deviceId: string }): Promise<PhoneHandle> {
  const sdk: JsSdk = await import('matrix-js-sdk');
  const client = sdk.createClient({ baseUrl: hs.url, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: silent });
  const events: ClientEvent[] = [];
  const listeners = new Set<() => void>();
  client.on(sdk.RoomEvent.Timeline, (ev: import('matrix-js-sdk').MatrixEvent) => {
    events.push(ev.event as ClientEvent);
    for (const l of [...listeners]) l();
  });
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
  await client.startClient({ initialSyncLimit: 10 });
  await prepared;
  const waitFor = (pred: (e: ClientEvent) => boolean, ms = 15_000): Promise<ClientEvent> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = events.find(pred);
        if (hit) { listeners.delete(check); clearTimeout(t); resolve(hit); }
      };
      const t = setTimeout(() => { listeners.delete(check); reject(new Error(`phone did not see the expected event (${events.length} events seen: ${events.slice(-5).map((e) => `${e.type}/${e.sender}`).join(", ")})`)); }, ms);
      listeners.add(check);
      check();
    });
  return { client, events, waitFor, stop: () => client.stopClient() };
}

export function bodyOf(e: ClientEvent): string {
  const c = e.content as { body?: unknown };
  return typeof c.body === 'string' ? c.body : '';
}
