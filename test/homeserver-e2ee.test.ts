/**
 * The homeserver fixture's end-to-end-encryption support, against matrix-js-sdk's Rust crypto (two
 * "phones" exchanging encrypted messages, cross-signing) and raw HTTP for the spec's shapes: devices
 * with user-interactive auth, to-device delivery and acknowledgement, device_lists, one-time/fallback keys.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHomeserver, type Homeserver, type RegisteredUser } from './fixtures/homeserver.js';
import { bodyOf, startPhone, waitForDeviceKeys, type PhoneHandle } from './helpers/phone.js';

type UIAuthCallback<T> = import('matrix-js-sdk').UIAuthCallback<T>;

let hs: Homeserver;
const phones: PhoneHandle[] = [];

type Json = Record<string, unknown>;

async function api(method: string, p: string, opts: { token?: string; body?: unknown } = {}): Promise<{ status: number; json: Json }> {
  const headers: Record<string, string> = {};
  if (opts.token) headers['Authorization'] = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(hs.url + p, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Json) : {} };
}

async function login(user: string, password: string, deviceId?: string): Promise<{ accessToken: string; deviceId: string }> {
  const body: Json = { type: 'm.login.password', identifier: { type: 'm.id.user', user }, password };
  if (deviceId !== undefined) body['device_id'] = deviceId;
  const r = await api('POST', '/_matrix/client/v3/login', { body });
  expect(r.status).toBe(200);
  return { accessToken: String(r.json['access_token']), deviceId: String(r.json['device_id']) };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const passwordAuth = (userId: string, password: string, session: unknown): Json => ({
  type: 'm.login.password',
  identifier: { type: 'm.id.user', user: userId },
  password,
  session,
});

beforeAll(async () => {
  hs = await startHomeserver();
});

afterAll(async () => {
  for (const p of phones) p.stop();
  await hs.stop();
});

describe('two matrix-js-sdk clients with Rust crypto', () => {
  let alice: RegisteredUser;
  let bob: RegisteredUser;
  let a: PhoneHandle;
  let b: PhoneHandle;
  let roomId: string;

  beforeAll(async () => {
    alice = hs.registerUser('alice', 'pw-alice');
    bob = hs.registerUser('bob', 'pw-bob');
    a = await startPhone(hs, alice, { crypto: true });
    phones.push(a);
    b = await startPhone(hs, bob, { crypto: true });
    phones.push(b);
  }, 60_000);

  it('A creates an encrypted room, B joins; they exchange messages the server only sees as ciphertext', async () => {
    await until('both phones uploaded device keys', () => hs.devices(alice.userId)[0]?.keys !== null && hs.devices(bob.userId)[0]?.keys !== null);
    const created = await a.client.createRoom({
      invite: [bob.userId],
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    });
    roomId = created.room_id;
    expect(hs.events(roomId).find((e) => e.type === 'm.room.encryption')?.content).toEqual({ algorithm: 'm.megolm.v1.aes-sha2' });
    // B's phone accepts the invite; A must see the join and B's device before encrypting to it.
    await a.waitFor((e) => e.room_id === roomId && e.type === 'm.room.member' && e.state_key === bob.userId && e.content['membership'] === 'join');
    await until('A knows the room is encrypted', async () => (await a.client.getCrypto()?.isEncryptionEnabledInRoom(roomId)) === true);
    await waitForDeviceKeys(a, bob.userId, bob.deviceId);

    await a.client.sendTextMessage(roomId, 'hello bob, the secret is 42');
    const got = await b.waitFor((e) => e.room_id === roomId && e.sender === alice.userId && e.type === 'm.room.message');
    expect(bodyOf(got)).toBe('hello bob, the secret is 42');
    expect(b.raw.find((e) => e.event_id === got.event_id)?.type).toBe('m.room.encrypted');

    await b.client.sendTextMessage(roomId, 'got it, alice');
    const reply = await a.waitFor((e) => e.room_id === roomId && e.sender === bob.userId && e.type === 'm.room.message');
    expect(bodyOf(reply)).toBe('got it, alice');

    const stored = hs.events(roomId).filter((e) => e.type === 'm.room.encrypted');
    expect(stored.map((e) => e.sender).sort()).toEqual([alice.userId, bob.userId].sort());
    expect(stored.every((e) => e.content['algorithm'] === 'm.megolm.v1.aes-sha2')).toBe(true);
    expect(JSON.stringify(hs.events(roomId))).not.toMatch(/secret is 42|got it, alice/);
    // The room keys travelled as to-device messages; each was acknowledged by the recipient's next sync.
    await until('to-device inboxes are drained', () => [...hs.devices(alice.userId), ...hs.devices(bob.userId)].every((d) => d.pendingToDevice === 0));
    expect(hs.requests.filter((r) => r.path.startsWith('/_matrix/client/v3/sendToDevice/m.room.encrypted/') && r.status === 200).length).toBeGreaterThanOrEqual(2);
    expect(hs.requests.filter((r) => r.path === '/_matrix/client/v3/keys/claim' && r.status === 200).length).toBeGreaterThanOrEqual(1);
    // Nothing the clients used is missing from the fixture.
    expect(hs.requests.filter((r) => r.status === 404 && r.userId !== undefined && !/account_data|room_keys/.test(r.path)).map((r) => `${r.method} ${r.path}`)).toEqual([]);
  }, 60_000);

  it('bootstrapCrossSigning: first upload without auth, replacing needs the password; the device is signed by the self-signing key', async () => {
    const calls: { auth: boolean; status: number; flows?: unknown }[] = [];
    const authUploadDeviceSigningKeys: UIAuthCallback<void> = async (makeRequest) => {
      try {
        const res = await makeRequest(null);
        calls.push({ auth: false, status: 200 });
        return res;
      } catch (err) {
        const e = err as { httpStatus?: number; data?: { session?: unknown; flows?: unknown } };
        calls.push({ auth: false, status: e.httpStatus ?? 0, flows: e.data?.flows });
        if (e.httpStatus !== 401 || typeof e.data?.session !== 'string') throw err;
        const res = await makeRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: alice.userId }, password: 'pw-alice', session: e.data.session });
        calls.push({ auth: true, status: 200 });
        return res;
      }
    };
    const crypto = a.client.getCrypto();
    if (!crypto) throw new Error('no crypto');
    await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys });
    expect(calls).toEqual([{ auth: false, status: 200 }]);

    const signedBySsk = (): { master: string; ssk: string; signed: boolean } => {
      const cs = hs.crossSigningKeys(alice.userId);
      const master = Object.values((cs.master?.['keys'] ?? {}) as Record<string, string>)[0] ?? '';
      const ssk = Object.values((cs.selfSigning?.['keys'] ?? {}) as Record<string, string>)[0] ?? '';
      const dev = hs.devices(alice.userId).find((d) => d.deviceId === alice.deviceId);
      const sigs = (dev?.keys?.['signatures'] ?? {}) as Record<string, Record<string, string>>;
      return { master, ssk, signed: ssk !== '' && typeof sigs[alice.userId]?.[`ed25519:${ssk}`] === 'string' };
    };
    await until('the device is signed by the self-signing key', () => signedBySsk().signed);
    const first = signedBySsk();
    expect(hs.crossSigningKeys(alice.userId).master?.['usage']).toEqual(['master']);
    expect(await crypto.getCrossSigningKeyId()).toBe(first.master);
    // Bob's Rust crypto checks the signature itself on what /keys/query returns (after a device_lists change).
    const bc = b.client.getCrypto();
    if (!bc) throw new Error('no crypto');
    await until('B sees A\'s device as signed by its owner', async () => {
      await bc.getUserDeviceInfo([alice.userId], true); // fetches A's keys if B does not track A yet
      return (await bc.getDeviceVerificationStatus(alice.userId, alice.deviceId))?.signedByOwner === true;
    });

    // Let A settle first: the signature upload changed A's device list, so A re-queries its own keys, and a
    // reset while that answer (still the old master key) is being processed makes the Rust SDK drop the new
    // private keys. The same race exists against Synapse; it is the client's, not the fixture's.
    const sigUpload = hs.requests.map((r) => r.path).lastIndexOf('/_matrix/client/v3/keys/signatures/upload');
    await until('A re-queried its own keys', () =>
      hs.requests.slice(sigUpload + 1).some((r) => r.path === '/_matrix/client/v3/keys/query' && r.userId === alice.userId && r.status === 200),
    );
    await crypto.getUserDeviceInfo([alice.userId]); // waits for an in-flight /keys/query for alice to be processed
    await crypto.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys });
    expect(calls.slice(1)).toEqual([
      { auth: false, status: 401, flows: [{ stages: ['m.login.password'] }] },
      { auth: true, status: 200 },
    ]);
    await until('the device is signed by the new self-signing key', () => signedBySsk().ssk !== first.ssk && signedBySsk().signed);
    expect(signedBySsk().master).not.toBe(first.master);
    expect(await crypto.getCrossSigningKeyId()).toBe(signedBySsk().master);
  }, 60_000);

  it('keys/query shows the user-signing key only to its owner', async () => {
    const q = { device_keys: { [alice.userId]: [] } };
    const own = await api('POST', '/_matrix/client/v3/keys/query', { token: alice.accessToken, body: q });
    const other = await api('POST', '/_matrix/client/v3/keys/query', { token: bob.accessToken, body: q });
    expect(own.status).toBe(200);
    expect(Object.keys(own.json['user_signing_keys'] as Json)).toEqual([alice.userId]);
    expect(other.json['user_signing_keys']).toEqual({});
    expect(Object.keys(other.json['master_keys'] as Json)).toEqual([alice.userId]);
    expect(Object.keys(other.json['self_signing_keys'] as Json)).toEqual([alice.userId]);
    expect(Object.keys((other.json['device_keys'] as Record<string, Json>)[alice.userId] ?? {})).toEqual([alice.deviceId]);
    expect(other.json['failures']).toEqual({});
  });
});

describe('devices and user-interactive auth', () => {
  it('each password login makes a new device unless device_id is given', async () => {
    const carol = hs.registerUser('carol', 'pw-carol');
    const l1 = await login('carol', 'pw-carol');
    const l2 = await login('carol', 'pw-carol');
    const again = await login('carol', 'pw-carol', l1.deviceId);
    expect(new Set([carol.deviceId, l1.deviceId, l2.deviceId]).size).toBe(3);
    expect(again.deviceId).toBe(l1.deviceId);
    const list = await api('GET', '/_matrix/client/v3/devices', { token: carol.accessToken });
    expect(((list.json['devices'] as Json[]) ?? []).map((d) => d['device_id']).sort()).toEqual([carol.deviceId, l1.deviceId, l2.deviceId].sort());
    const one = await api('GET', `/_matrix/client/v3/devices/${l2.deviceId}`, { token: carol.accessToken });
    expect(one.json['device_id']).toBe(l2.deviceId);
    expect((await api('GET', '/_matrix/client/v3/devices/NOSUCHDEVICE', { token: carol.accessToken })).json['errcode']).toBe('M_NOT_FOUND');
  });

  it('deleting a device needs the password (401 challenge first) and invalidates its tokens', async () => {
    const dan = hs.registerUser('dan', 'pw-dan');
    const other = await login('dan', 'pw-dan');
    const path = `/_matrix/client/v3/devices/${other.deviceId}`;

    const challenge = await api('DELETE', path, { token: dan.accessToken, body: {} });
    expect(challenge.status).toBe(401);
    expect(challenge.json['flows']).toEqual([{ stages: ['m.login.password'] }]);
    expect(challenge.json['params']).toEqual({});
    expect(typeof challenge.json['session']).toBe('string');
    expect(challenge.json['errcode']).toBeUndefined();

    const wrong = await api('DELETE', path, { token: dan.accessToken, body: { auth: passwordAuth(dan.userId, 'nope', challenge.json['session']) } });
    expect(wrong.status).toBe(401);
    expect(wrong.json['errcode']).toBe('M_FORBIDDEN');
    expect(hs.devices(dan.userId).map((d) => d.deviceId)).toContain(other.deviceId);
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: other.accessToken })).status).toBe(200);

    const done = await api('DELETE', path, { token: dan.accessToken, body: { auth: passwordAuth(dan.userId, 'pw-dan', challenge.json['session']) } });
    expect(done.status).toBe(200);
    const who = await api('GET', '/_matrix/client/v3/account/whoami', { token: other.accessToken });
    expect(who.status).toBe(401);
    expect(who.json['errcode']).toBe('M_UNKNOWN_TOKEN');
    expect(hs.devices(dan.userId).map((d) => d.deviceId)).toEqual([dan.deviceId]);

    // POST /delete_devices: same auth, several devices at once.
    const x = await login('dan', 'pw-dan');
    const y = await login('dan', 'pw-dan');
    const body = { devices: [x.deviceId, y.deviceId] };
    const ch2 = await api('POST', '/_matrix/client/v3/delete_devices', { token: dan.accessToken, body });
    expect(ch2.status).toBe(401);
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: x.accessToken })).status).toBe(200);
    const ok2 = await api('POST', '/_matrix/client/v3/delete_devices', { token: dan.accessToken, body: { ...body, auth: passwordAuth(dan.userId, 'pw-dan', ch2.json['session']) } });
    expect(ok2.status).toBe(200);
    for (const t of [x, y]) expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: t.accessToken })).json['errcode']).toBe('M_UNKNOWN_TOKEN');
    expect((await api('GET', '/_matrix/client/v3/account/whoami', { token: dan.accessToken })).status).toBe(200);
  });
});

describe('keys, to-device and device_lists over raw HTTP', () => {
  let erin: RegisteredUser;
  let fred: RegisteredUser;

  beforeAll(() => {
    erin = hs.registerUser('erin', 'pw-erin');
    fred = hs.registerUser('fred', 'pw-fred');
  });

  const deviceKeys = (u: RegisteredUser): Json => ({
    user_id: u.userId,
    device_id: u.deviceId,
    algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
    keys: { [`curve25519:${u.deviceId}`]: 'c'.repeat(43), [`ed25519:${u.deviceId}`]: 'e'.repeat(43) },
    signatures: { [u.userId]: { [`ed25519:${u.deviceId}`]: 's'.repeat(86) } },
  });
  const sync = async (u: { accessToken: string }, since?: string, timeout = 0): Promise<Json> => {
    const q = new URLSearchParams({ timeout: String(timeout) });
    if (since !== undefined) q.set('since', since);
    const r = await api('GET', `/_matrix/client/v3/sync?${q}`, { token: u.accessToken });
    expect(r.status).toBe(200);
    return r.json;
  };

  it('rejects device_keys for another user or device', async () => {
    const wrongUser = await api('POST', '/_matrix/client/v3/keys/upload', { token: erin.accessToken, body: { device_keys: { ...deviceKeys(erin), user_id: fred.userId } } });
    expect(wrongUser.status).toBe(400);
    expect(wrongUser.json['errcode']).toBe('M_BAD_JSON');
    const wrongDevice = await api('POST', '/_matrix/client/v3/keys/upload', { token: erin.accessToken, body: { device_keys: { ...deviceKeys(erin), device_id: 'OTHER' } } });
    expect(wrongDevice.status).toBe(400);
    expect(hs.devices(erin.userId)[0]?.keys).toBeNull();
  });

  it('one-time keys are claimed once, then the fallback key (marked used); counts show in /sync', async () => {
    const upload = async (body: Json): Promise<{ status: number; json: Json }> => api('POST', '/_matrix/client/v3/keys/upload', { token: erin.accessToken, body });
    const otk = { key: 'k1', signatures: { [erin.userId]: { [`ed25519:${erin.deviceId}`]: 'sig-1' } } };
    const fallback = { key: 'fb', fallback: true, signatures: {} };
    expect((await upload({ one_time_keys: { 'signed_curve25519:AAAA': otk } })).json).toEqual({ one_time_key_counts: { signed_curve25519: 1 } });
    // vodozemac numbers fallback keys like one-time keys: the same id in both is no conflict (as in Synapse)
    expect((await upload({ fallback_keys: { 'signed_curve25519:AAAA': fallback } })).status).toBe(200);
    // re-uploading a one-time key: fine with other signatures, refused with another key
    expect((await upload({ one_time_keys: { 'signed_curve25519:AAAA': { ...otk, signatures: {} } } })).json).toEqual({ one_time_key_counts: { signed_curve25519: 1 } });
    const clash = await upload({ one_time_keys: { 'signed_curve25519:AAAA': { ...otk, key: 'other' } } });
    expect(clash.status).toBe(400);
    expect(clash.json['errcode']).toBe('M_UNKNOWN');

    const s0 = await sync(erin);
    expect(s0['device_one_time_keys_count']).toEqual({ signed_curve25519: 1 });
    expect(s0['device_unused_fallback_key_types']).toEqual(['signed_curve25519']);
    const claim = async (): Promise<unknown> =>
      (await api('POST', '/_matrix/client/v3/keys/claim', { token: fred.accessToken, body: { one_time_keys: { [erin.userId]: { [erin.deviceId]: 'signed_curve25519' } } } })).json;
    expect(await claim()).toEqual({ one_time_keys: { [erin.userId]: { [erin.deviceId]: { 'signed_curve25519:AAAA': otk } } }, failures: {} });
    expect(await claim()).toEqual({ one_time_keys: { [erin.userId]: { [erin.deviceId]: { 'signed_curve25519:AAAA': fallback } } }, failures: {} });
    expect(await claim()).toEqual({ one_time_keys: { [erin.userId]: { [erin.deviceId]: { 'signed_curve25519:AAAA': fallback } } }, failures: {} });
    const s1 = await sync(erin);
    expect(s1['device_one_time_keys_count']).toEqual({ signed_curve25519: 0 });
    expect(s1['device_unused_fallback_key_types']).toEqual([]);
  });

  it('to-device: wakes a long poll, is idempotent per txnId, redelivered until a later since acknowledges it', async () => {
    const first = await sync(erin);
    const since = String(first['next_batch']);
    const started = Date.now();
    const polling = sync(erin, since, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    const msg = { messages: { [erin.userId]: { [erin.deviceId]: { n: 1 } } } };
    expect((await api('PUT', '/_matrix/client/v3/sendToDevice/org.example.test/txn1', { token: fred.accessToken, body: msg })).status).toBe(200);
    expect((await api('PUT', '/_matrix/client/v3/sendToDevice/org.example.test/txn1', { token: fred.accessToken, body: msg })).status).toBe(200);
    const woke = await polling;
    expect(Date.now() - started).toBeLessThan(5_000);
    const expected = [{ sender: fred.userId, type: 'org.example.test', content: { n: 1 } }];
    expect((woke['to_device'] as Json)['events']).toEqual(expected);
    // not acknowledged yet (same since again): delivered again, once
    const retry = await sync(erin, since);
    expect((retry['to_device'] as Json)['events']).toEqual(expected);
    const acked = await sync(erin, String(retry['next_batch']));
    expect((acked['to_device'] as Json)['events']).toEqual([]);
    expect(hs.devices(erin.userId)[0]?.pendingToDevice).toBe(0);

    // "*" reaches every device of the user
    const second = await login('erin', 'pw-erin');
    await api('PUT', '/_matrix/client/v3/sendToDevice/org.example.test/txn2', { token: fred.accessToken, body: { messages: { [erin.userId]: { '*': { n: 2 } } } } });
    for (const t of [erin, second]) {
      expect(((await sync(t))['to_device'] as Json)['events']).toEqual([{ sender: fred.userId, type: 'org.example.test', content: { n: 2 } }]);
    }
  });

  it('device_lists: key changes of users sharing a room wake /sync; joins and leaves are reported', async () => {
    const room = String((await api('POST', '/_matrix/client/v3/createRoom', { token: fred.accessToken, body: { invite: [erin.userId] } })).json['room_id']);
    const before = String((await sync(erin))['next_batch']);
    await api('POST', `/_matrix/client/v3/join/${encodeURIComponent(room)}`, { token: erin.accessToken, body: {} });
    const joined = await sync(erin, before);
    expect((joined['device_lists'] as Json)['changed']).toEqual([fred.userId]);

    const since = String(joined['next_batch']);
    const polling = sync(erin, since, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    const up = await api('POST', '/_matrix/client/v3/keys/upload', { token: fred.accessToken, body: { device_keys: deviceKeys(fred) } });
    expect(up.status).toBe(200);
    const changed = await polling;
    expect(changed['device_lists']).toEqual({ changed: [fred.userId], left: [] });
    const q = await api('POST', '/_matrix/client/v3/keys/query', { token: erin.accessToken, body: { device_keys: { [fred.userId]: [] } } });
    expect((q.json['device_keys'] as Record<string, Json>)[fred.userId]).toEqual({ [fred.deviceId]: deviceKeys(fred) });

    // an identical re-upload is no change
    const quiet = String(changed['next_batch']);
    await api('POST', '/_matrix/client/v3/keys/upload', { token: fred.accessToken, body: { device_keys: deviceKeys(fred) } });
    expect((await sync(erin, quiet))['device_lists']).toEqual({ changed: [], left: [] });

    await api('POST', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/leave`, { token: fred.accessToken, body: {} });
    expect((await sync(erin, quiet))['device_lists']).toEqual({ changed: [], left: [fred.userId] });
  });
});
