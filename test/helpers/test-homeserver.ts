/**
 * The homeserver a Matrix test talks to. With MESHPILOT_TEST_HOMESERVER and
 * MESHPILOT_TEST_REGISTRATION_SECRET set (`.ci/run` starts Synapse and sets them), it is that real
 * server behind a small fault proxy; without them (a user's clone has no ../shared), the in-memory
 * fixture (test/fixtures/homeserver.ts).
 *
 * The fault proxy is what lets one test suite do on a real server what the fixture does on demand:
 * `setDown` answers 502 to everything (in-flight long polls included), `restart` drops every
 * connection, `requests` logs method, path and status. It also reads the /sync and /createRoom
 * answers that pass through it, so `events(room)` and `waitFor` can show what the server sent to its
 * clients: Synapse 1.67 has no admin API for a room's timeline. A room's current state comes from the
 * admin state API, so state events are seen even in rooms no client syncs.
 *
 * On the real server accounts and rooms outlive a run: every localpart gets this run's suffix
 * (`lucas` → `lucas-k3f9a2`), so runs never collide. Use the user ids registration returns.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { registerWithSharedSecret } from '../../bots/matrix/index.js';
import { startHomeserver, type ClientEvent, type RegisteredUser, type RequestLogEntry } from '../fixtures/homeserver.js';

export type { ClientEvent, RegisteredUser } from '../fixtures/homeserver.js';

export interface TestDevice {
  deviceId: string;
  displayName: string | null;
  /** The device keys as the server hands them out (null before any upload). */
  keys: Record<string, unknown> | null;
}

export interface TestCrossSigningKeys {
  master?: Record<string, unknown>;
  selfSigning?: Record<string, unknown>;
  userSigning?: Record<string, unknown>;
}

export interface TestHomeserver {
  readonly kind: 'fixture' | 'synapse';
  readonly url: string;
  /** The port of `url` on 127.0.0.1. */
  readonly port: number;
  readonly serverName: string;
  readonly registrationSharedSecret: string;
  /** Method, path (no query) and status of the requests that reached the server through `url`. */
  readonly requests: RequestLogEntry[];
  /** On Synapse the localpart gets this run's suffix (unless `exact`: made unique already): use the returned userId. */
  registerUser(localpart: string, password: string, opts?: { admin?: boolean; displayname?: string; exact?: boolean }): Promise<RegisteredUser>;
  /** `name` made unique to this run (same rule as registerUser's localparts): for config bot prefixes. */
  unique(name: string): string;
  /** What the server sent its clients of a room (timeline, oldest first) plus its current state. */
  events(roomId: string): Promise<ClientEvent[]>;
  waitFor(predicate: (ev: ClientEvent) => boolean, timeoutMs?: number): Promise<ClientEvent>;
  devices(userId: string): Promise<TestDevice[]>;
  crossSigningKeys(userId: string): Promise<TestCrossSigningKeys>;
  /** While down, every request is answered 502 (like a reverse proxy with a dead upstream). */
  setDown(down: boolean): void;
  /** Drops every open connection and listens again on the same port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Where a client downloads media on this server: the authenticated endpoint (spec v1.11) on the fixture,
 * the legacy v3 one on Synapse 1.67, which predates it.
 */
export function mediaDownloadPath(hs: Pick<TestHomeserver, 'kind'>): string {
  return hs.kind === 'fixture' ? '/_matrix/client/v1/media/download/' : '/_matrix/media/v3/download/';
}

/** The real server's address when the environment names one. */
export function realHomeserverEnv(): { url: string; secret: string } | undefined {
  const url = process.env['MESHPILOT_TEST_HOMESERVER'];
  const secret = process.env['MESHPILOT_TEST_REGISTRATION_SECRET'];
  return url && secret ? { url: url.replace(/\/+$/, ''), secret } : undefined;
}

export async function startTestHomeserver(opts: { forceFixture?: boolean } = {}): Promise<TestHomeserver> {
  const real = opts.forceFixture ? undefined : realHomeserverEnv();
  return real ? startSynapseProxy(real.url, real.secret) : fixtureHomeserver();
}

async function fixtureHomeserver(): Promise<TestHomeserver> {
  const hs = await startHomeserver();
  return {
    kind: 'fixture',
    get url() { return hs.url; },
    get port() { return hs.port; },
    serverName: hs.serverName,
    registrationSharedSecret: hs.registrationSharedSecret,
    get requests() { return hs.requests; },
    registerUser: async (l, p, o) => hs.registerUser(l, p, { ...(o?.admin ? { admin: true } : {}), ...(o?.displayname ? { displayname: o.displayname } : {}) }),
    unique: (name) => name,
    events: async (room) => hs.events(room),
    waitFor: (pred, ms) => hs.waitFor(pred, ms),
    devices: async (u) => hs.devices(u).map((d) => ({ deviceId: d.deviceId, displayName: d.displayName, keys: d.keys })),
    crossSigningKeys: async (u) => hs.crossSigningKeys(u),
    setDown: (d) => hs.setDown(d),
    restart: () => hs.restart(),
    stop: () => hs.stop(),
  };
}

// ---- the real server behind a fault proxy ------------------------------------------------------------

const MAX_CAPTURE_BYTES = 16 * 1024 * 1024;

async function startSynapseProxy(upstream: string, secret: string): Promise<TestHomeserver> {
  const suffix = randomBytes(4).toString('hex').slice(0, 6);
  const unique = (name: string): string => `${name}-${suffix}`.replace(/--+/g, '-');
  const target = new URL(upstream);
  const requests: RequestLogEntry[] = [];
  const seen = new Map<string, ClientEvent>();
  const timeline = new Map<string, ClientEvent[]>();
  const rooms = new Set<string>();
  const waiters = new Set<() => void>();
  const sockets = new Set<Socket>();
  const inFlight = new Set<{ abort(): void }>();
  let down = false;

  const capture = (roomId: string, ev: ClientEvent): void => {
    rooms.add(roomId);
    if (typeof ev.event_id !== 'string' || seen.has(ev.event_id)) return;
    const full = { ...ev, room_id: roomId };
    seen.set(ev.event_id, full);
    const list = timeline.get(roomId) ?? [];
    list.push(full);
    timeline.set(roomId, list);
    for (const w of [...waiters]) w();
  };
  const captureSync = (body: unknown): void => {
    const r = (body as { rooms?: { join?: Record<string, SyncRoom>; leave?: Record<string, SyncRoom> } }).rooms;
    for (const section of [r?.join, r?.leave]) {
      for (const [roomId, room] of Object.entries(section ?? {})) {
        for (const ev of room.state?.events ?? []) capture(roomId, ev);
        for (const ev of room.timeline?.events ?? []) capture(roomId, ev);
      }
    }
    for (const roomId of Object.keys(r && 'invite' in r ? (r as { invite?: Record<string, unknown> }).invite ?? {} : {})) rooms.add(roomId);
  };

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const log = (status: number): void => {
      requests.push({ method: req.method ?? 'GET', path, status });
      if (requests.length > 2000) requests.splice(0, requests.length - 2000);
    };
    const badGateway = (): void => {
      log(502);
      if (res.headersSent) { res.destroy(); return; }
      // What nginx in front of a dead Synapse answers: HTML, not a Matrix error.
      res.writeHead(502, { 'content-type': 'text/html' }).end('<html><body><h1>502 Bad Gateway</h1></body></html>');
    };
    if (down) { req.resume(); badGateway(); return; }
    const up = http.request({
      host: target.hostname, port: target.port, method: req.method, path: req.url,
      headers: { ...req.headers, host: target.host, 'accept-encoding': 'identity' },
    }, (upRes) => {
      const chunks: Buffer[] = [];
      let size = 0;
      upRes.on('data', (c: Buffer) => { size += c.length; if (size <= MAX_CAPTURE_BYTES) chunks.push(c); });
      upRes.on('end', () => {
        inFlight.delete(handle);
        if (down) { badGateway(); return; }
        const body = Buffer.concat(chunks);
        const status = upRes.statusCode ?? 502;
        if (status === 200 && size <= MAX_CAPTURE_BYTES && /json/.test(String(upRes.headers['content-type']))) {
          try {
            if (/\/sync$/.test(path)) captureSync(JSON.parse(body.toString('utf8')));
            else if (/\/createRoom$/.test(path) || /\/join(\/[^/]+)?$/.test(path)) {
              const id = (JSON.parse(body.toString('utf8')) as { room_id?: unknown }).room_id;
              if (typeof id === 'string') rooms.add(id);
            }
          } catch { /* not JSON after all: nothing to capture */ }
        }
        log(status);
        const headers = { ...upRes.headers };
        delete headers['transfer-encoding'];
        headers['content-length'] = String(body.length);
        res.writeHead(status, headers).end(body);
      });
      upRes.on('error', () => { inFlight.delete(handle); badGateway(); });
    });
    const handle = { abort: (): void => { up.destroy(); badGateway(); } };
    inFlight.add(handle);
    up.on('error', () => { if (inFlight.delete(handle)) badGateway(); });
    req.pipe(up);
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.keepAliveTimeout = 65_000;
  const listen = (port: number): Promise<number> => new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve((server.address() as AddressInfo).port); });
  });
  const port = await listen(0);
  const url = `http://127.0.0.1:${port}`;
  const close = async (): Promise<void> => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const h of [...inFlight]) { inFlight.delete(h); h.abort(); }
    for (const s of sockets) s.destroy();
    sockets.clear();
    await closed;
  };

  // An admin of our own: room state and devices come from the admin and keys APIs.
  const admin = await registerWithSharedSecret({ homeserverUrl: upstream, sharedSecret: secret, localpart: unique('mp-test-admin'), password: randomBytes(12).toString('hex'), admin: true });
  const serverName = admin.userId.slice(admin.userId.indexOf(':') + 1);
  const call = async (method: string, p: string, body?: unknown): Promise<unknown> => {
    const res = await fetch(`${upstream}${p}`, {
      method, headers: { authorization: `Bearer ${admin.accessToken}`, 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    if (!res.ok) throw new Error(`${method} ${p.split('?')[0]}: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`);
    return res.json();
  };
  const roomState = async (roomId: string): Promise<ClientEvent[]> => {
    const r = (await call('GET', `/_synapse/admin/v1/rooms/${encodeURIComponent(roomId)}/state`).catch(() => ({ state: [] }))) as { state?: ClientEvent[] };
    return (r.state ?? []).map((e) => ({ ...e, room_id: roomId }));
  };
  const events = async (roomId: string): Promise<ClientEvent[]> => {
    const state = await roomState(roomId);
    const out = [...(timeline.get(roomId) ?? [])];
    for (const e of state) if (!seen.has(e.event_id)) out.push(e);
    return out;
  };
  const keysQuery = async (userId: string): Promise<KeysQuery> =>
    (await call('POST', '/_matrix/client/v3/keys/query', { device_keys: { [userId]: [] } })) as KeysQuery;

  return {
    kind: 'synapse',
    url, port, serverName, registrationSharedSecret: secret, requests,
    unique,
    registerUser: (localpart, password, o) => registerWithSharedSecret({
      homeserverUrl: upstream, sharedSecret: secret, localpart: o?.exact ? localpart : unique(localpart), password,
      ...(o?.admin ? { admin: true } : {}), ...(o?.displayname ? { displayname: o.displayname } : {}),
    }),
    events,
    waitFor(predicate, timeoutMs = 15_000) {
      return new Promise<ClientEvent>((resolve, reject) => {
        let done = false;
        const finish = (ev?: ClientEvent, err?: Error): void => {
          if (done) return;
          done = true;
          waiters.delete(check);
          clearTimeout(timer);
          clearInterval(poll);
          if (ev) resolve(ev); else reject(err);
        };
        const check = (): void => {
          for (const ev of seen.values()) if (predicate(ev)) return finish(ev);
        };
        // State of rooms no client syncs (a stranger's room, say) is only seen through the admin API.
        const poll = setInterval(() => {
          void (async () => {
            for (const roomId of [...rooms]) {
              for (const ev of await roomState(roomId)) if (!done && predicate(ev)) return finish(ev);
            }
          })();
        }, 500);
        const timer = setTimeout(() => finish(undefined, new Error(`homeserver: no matching event within ${timeoutMs} ms`)), timeoutMs);
        waiters.add(check);
        check();
      });
    },
    async devices(userId) {
      const list = (await call('GET', `/_synapse/admin/v2/users/${encodeURIComponent(userId)}/devices`)) as { devices?: Array<{ device_id: string; display_name?: string | null; last_seen_ts?: number | null }> };
      const keys = (await keysQuery(userId)).device_keys?.[userId] ?? {};
      return (list.devices ?? []).map((d) => ({ deviceId: d.device_id, displayName: d.display_name ?? null, keys: keys[d.device_id] ?? null }));
    },
    async crossSigningKeys(userId) {
      const q = await keysQuery(userId);
      return {
        ...(q.master_keys?.[userId] ? { master: q.master_keys[userId] } : {}),
        ...(q.self_signing_keys?.[userId] ? { selfSigning: q.self_signing_keys[userId] } : {}),
        ...(q.user_signing_keys?.[userId] ? { userSigning: q.user_signing_keys[userId] } : {}),
      };
    },
    setDown(d) {
      down = d;
      if (d) for (const h of [...inFlight]) { inFlight.delete(h); h.abort(); }
    },
    async restart() {
      await close();
      await listen(port);
    },
    stop: close,
  };
}

interface SyncRoom {
  state?: { events?: ClientEvent[] };
  timeline?: { events?: ClientEvent[] };
}

interface KeysQuery {
  device_keys?: Record<string, Record<string, Record<string, unknown>>>;
  master_keys?: Record<string, Record<string, unknown>>;
  self_signing_keys?: Record<string, Record<string, unknown>>;
  user_signing_keys?: Record<string, Record<string, unknown>>;
}
