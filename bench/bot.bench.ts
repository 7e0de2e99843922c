/**
 * Device bot figures, against the homeserver and Anthropic fixtures on loopback (in a process of their
 * own: bench/bot-fixtures.ts) with the real bot process: message → reply overhead (LLM answering
 * instantly), `!status` round trip, RSS per bot process (at rest: after the traffic, once the bot has been
 * quiet for SETTLE_IDLE_MS), and the time to bring up 20 bots.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeCredentials } from '../bots/credentials.js';
import { SETTLE_IDLE_MS } from '../bots/memory-settle.js';
import { ensureHome } from '../capabilities/home.js';
import { buildBotBundle } from '../launcher/bundle.js';
import { writeConfig } from '../capabilities/config.js';
import { botEnv, botExecArgv, execArgvFor } from '../launcher/bot-child.js';
import { textReply } from '../test/fixtures/anthropic.js';
import type { RegisteredUser } from '../test/fixtures/homeserver.js';
import { createBotEnv, waitReady } from '../test/helpers/bot-env.js';
import { startPhone, type PhoneHandle } from '../test/helpers/phone.js';
import type { BenchFigure } from './run.js';

export const figures = ['bot.overhead_p50', 'bot.overhead_p99', 'bot.status_roundtrip_p50', 'bot.rss', 'bot.up20', 'bot.rss_e2ee_off'];

const mb = (kb: number): string => (kb / 1024).toFixed(1);

function rssKbOf(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/** RSS by kind of mapping (kB): the node binary's file pages (shared by all bots), anonymous (V8 heap, thread arenas), glibc's [heap], other files. */
function rssParts(pid: number): { node: number; anon: number; heap: number; files: number } {
  const out = { node: 0, anon: 0, heap: 0, files: 0 };
  let kind: keyof typeof out = 'anon';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const map = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (map) {
      const name = map[1] ?? '';
      kind = name === '' ? 'anon' : name === '[heap]' ? 'heap' : name === process.execPath || name.endsWith('/bin/node') ? 'node' : name.startsWith('[') ? 'anon' : 'files';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) out[kind] += Number(rss[1]);
  }
  return out;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
};

/** CPU time (user + system) of a process so far, in ms (Linux /proc). */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(f[11]) + Number(f[12])) * (1000 / 100); // clock ticks (USER_HZ 100)
}

/** Resolves once the homeserver lists the user's device keys. */
export async function waitForKeysOnServer(hsUrl: string, user: RegisteredUser, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await fetch(`${hsUrl}/_matrix/client/v3/keys/query`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user.accessToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ device_keys: { [user.userId]: [] } }),
    });
    const body = (await r.json()) as { device_keys?: Record<string, Record<string, unknown>> };
    if (body.device_keys?.[user.userId]?.[user.deviceId]) return;
    if (Date.now() > deadline) throw new Error(`the phone's device keys are not on the server after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface FixtureProcess {
  hsUrl: string;
  serverName: string;
  registrationSharedSecret: string;
  llmUrl: string;
  register(localpart: string, password: string): Promise<RegisteredUser>;
  close(): void;
}

/** Starts bench/bot-fixtures.ts (homeserver + Anthropic fixtures) in its own process. */
export async function startFixtureProcess(): Promise<FixtureProcess> {
  const entry = path.join(path.dirname(fileURLToPath(import.meta.url)), 'bot-fixtures.ts');
  const child = fork(entry, [], { execArgv: execArgvFor(entry), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = await new Promise<{ hsUrl: string; serverName: string; registrationSharedSecret: string; llmUrl: string }>((resolve, reject) => {
    child.once('message', (m) => resolve(m as never));
    child.once('exit', (code) => reject(new Error(`bench fixtures exited with ${code}`)));
  });
  let nextId = 0;
  const pending = new Map<number, (u: RegisteredUser) => void>();
  child.on('message', (m: { id?: number; user?: RegisteredUser }) => {
    if (m.id !== undefined && m.user) pending.get(m.id)?.(m.user);
  });
  return {
    ...ready,
    register: (localpart, password) =>
      new Promise((resolve) => {
        const id = nextId++;
        pending.set(id, resolve);
        child.send({ id, cmd: 'register', localpart, password });
      }),
    close: () => {
      if (child.connected) child.disconnect();
    },
  };
}

/**
 * The phone (matrix-js-sdk, in this process) hands every sync to its wasm OlmMachine, twice, and in wasm
 * each call unpickles the Olm account (~20 ms of curve25519): ~100 ms of this machine's 2 cores per
 * message, taken from the bot being measured. A real phone is another device, so the phone gets the same
 * shortcut as the bot's crypto adapter: a sync with nothing for crypto (no to-device events, no device
 * list changes, no key counts or the same ones as last time) is not handed over.
 */
export async function skipIdleSyncsInPhoneCrypto(): Promise<void> {
  interface Lists { readonly changed: unknown[]; readonly left: unknown[] }
  type Receive = (events: string, lists: Lists, counts: Map<string, number> | undefined, fallback: Set<string> | undefined) => Promise<string>;
  const wasm = (await import('@matrix-org/matrix-sdk-crypto-wasm')) as unknown as { OlmMachine: { prototype: { receiveSyncChanges: Receive } } };
  const proto = wasm.OlmMachine.prototype;
  const original = proto.receiveSyncChanges;
  const lastCounts = new WeakMap<object, string>();
  proto.receiveSyncChanges = function (this: object, events, lists, counts, fallback) {
    const idle = events === '[]' && lists.changed.length === 0 && lists.left.length === 0;
    // no counts and no fallback keys: the call for to-device events alone, which carries none
    const nothing = (counts === undefined || counts.size === 0) && fallback === undefined;
    const fingerprint = JSON.stringify([[...(counts ?? [])].sort(), fallback ? [...fallback].sort() : null]);
    if (idle && (nothing || lastCounts.get(this) === fingerprint)) return Promise.resolve('[]');
    return original.call(this, events, lists, counts, fallback).then((r) => {
      if (!nothing) lastCounts.set(this, fingerprint);
      return r;
    });
  };
}

export async function run(): Promise<BenchFigure[]> {
  // Measured as `meshpilot up` runs bots: the pre-built bundle and (botExecArgv/botEnv) the supervisor's
  // V8 flags and malloc environment. The default config has end-to-end encryption on, so the operator's
  // phone (matrix-js-sdk, in this process) runs crypto too; the fixtures run in a process of their own.
  const { file } = await buildBotBundle();
  const fx = await startFixtureProcess();
  const root = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-bot-'));
  const home = path.join(root, 'home');
  const { home: dirs } = ensureHome(home);
  const children: ChildProcess[] = [];
  let phone: PhoneHandle | undefined;
  const out: BenchFigure[] = [];
  try {
    const operator = await fx.register('lucas', 'pw-lucas');
    writeConfig(dirs.config, {
      matrix: { homeserver_url: fx.hsUrl, server_name: fx.serverName, registration_shared_secret: fx.registrationSharedSecret, encryption: 'auto' },
      operators: [operator.userId],
      llm: { api_key: 'sk-test', base_url: fx.llmUrl, model: 'claude-test', max_tokens: 1024 },
    });
    await skipIdleSyncsInPhoneCrypto();
    phone = await startPhone({ url: fx.hsUrl }, operator, { crypto: true });
    // the bot shares room keys with the devices the server lists: the phone's must be there first
    await waitForKeysOnServer(fx.hsUrl, operator);
    const p = phone;
    const addBot = async (device: string, capabilitiesYaml: string): Promise<string> => {
      const user = await fx.register(`meshpilot-${device}`, `pw-${device}`);
      writeCredentials(dirs.keys, device, { userId: user.userId, accessToken: user.accessToken, deviceId: user.deviceId, password: `pw-${device}` });
      writeFileSync(path.join(dirs.manifests, `${device}.yaml`), `device: ${device}\nos: linux\ntransport: { kind: local }\ncapabilities:\n${capabilitiesYaml}`);
      return user.userId;
    };
    const startBot = (device: string): ChildProcess => {
      const child = fork(file, [], { execArgv: botExecArgv(file), env: botEnv(home, { MESHPILOT_DEVICE: device, MESHPILOT_LOG_LEVEL: 'warn' }), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(child);
      return child;
    };

    const botUser = await addBot('bench', '  sys.info: {}\n  sys.health: {}\n');
    const child = startBot('bench');
    await waitReady(child);
    const live = await p.waitFor((e) => e.sender === botUser && /live/.test(String((e.content as { body?: string }).body)));
    const room = live.room_id;
    await p.waitFor((e) => e.room_id === room && e.type === 'm.room.member' && e.state_key === operator.userId && (e.content as { membership?: string }).membership === 'join');

    // One message at a time; overhead = reply's server timestamp - message's server timestamp (both as
    // the phone received them). Replies are encrypted: matched on the phone's decrypted view.
    const roundTrip = async (text: string, match: RegExp): Promise<number> => {
      const from = p.events.length;
      const { event_id } = await p.client.sendTextMessage(room, text);
      const mine = await p.waitFor((e) => e.event_id === event_id);
      const reply = await p.waitFor((e) => p.events.indexOf(e) >= from && e.sender === botUser && e.type === 'm.room.message' && match.test(String((e.content as { body?: string }).body)));
      return reply.origin_server_ts - mine.origin_server_ts;
    };
    for (let i = 0; i < 5; i++) await roundTrip(`warm ${i}`, /^ok\n/);
    const llm: number[] = [];
    const bot0 = cpuMs(child.pid ?? 0);
    const bench0 = process.cpuUsage();
    const wall0 = performance.now();
    for (let i = 0; i < 40; i++) llm.push(await roundTrip(`hello ${i}`, /^ok\n/));
    const bench = process.cpuUsage(bench0);
    process.stderr.write(`# per message: ${((performance.now() - wall0) / 40).toFixed(1)} ms wall, bot CPU ${((cpuMs(child.pid ?? 0) - bot0) / 40).toFixed(1)} ms, ` +
      `bench process (phone) CPU ${((bench.user + bench.system) / 40_000).toFixed(1)} ms\n`);
    out.push({ name: 'bot.overhead_p50', value: pct(llm, 50), unit: 'ms', target: '<= 50' });
    out.push({ name: 'bot.overhead_p99', value: pct(llm, 99), unit: 'ms', target: '<= 200' });
    const status: number[] = [];
    for (let i = 0; i < 15; i++) status.push(await roundTrip('!status', /🖥 bench/));
    out.push({ name: 'bot.status_roundtrip_p50', value: pct(status, 50), unit: 'ms', target: '<= 300' });
    // RSS of the bot at rest: once it has been quiet for SETTLE_IDLE_MS it hands the garbage of the traffic
    // back (bots/memory-settle.ts), as a bot between conversations. The figure right after the traffic is printed too.
    const busyKb = rssKbOf(child.pid ?? 0);
    await new Promise((r) => setTimeout(r, SETTLE_IDLE_MS + 2000));
    const rssKb = rssKbOf(child.pid ?? 0);
    process.stderr.write(`# bot RSS right after the traffic ${Math.round(busyKb / 1024)} MB, at rest ${Math.round(rssKb / 1024)} MB\n`);
    out.push({ name: 'bot.rss', value: Math.round(rssKb / 1024), unit: 'MB', target: '<= 80' });
    // RSS counts the node binary's shared pages in every bot; what each extra bot really costs is its private memory.
    const rollup = readFileSync(`/proc/${child.pid}/smaps_rollup`, 'utf8');
    const priv = ['Private_Clean', 'Private_Dirty'].reduce((sum, k) => sum + Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(rollup)?.[1] ?? 0), 0);
    const parts = rssParts(child.pid ?? 0);
    process.stderr.write(`# bot private memory (USS) ${Math.round(priv / 1024)} MB of ${Math.round(rssKb / 1024)} MB RSS ` +
      `(node binary ${mb(parts.node)}, anonymous ${mb(parts.anon)}, malloc [heap] ${mb(parts.heap)}, other files ${mb(parts.files)} MB)\n`);

    // 20 bots from cold: fork all, wait until every one has synced and reported ready.
    const names = Array.from({ length: 20 }, (_, i) => `up${i}`);
    for (const n of names) await addBot(n, '  sys.info: {}\n');
    // Stop the phone's sync so its own crypto work (20 new encrypted DMs to join and decrypt) does not take
    // the 2 cores from the bots being measured. Its device keys stay on the server, so each bot still does
    // the full key query/claim/share work.
    p.stop();
    const t0 = performance.now();
    await Promise.all(names.map((n) => waitReady(startBot(n), 120_000).catch((err: unknown) => {
      throw new Error(`bot ${n}: ${(err as Error).message}`);
    })));
    out.push({ name: 'bot.up20', value: (performance.now() - t0) / 1000, unit: 's', target: '<= 10' });
  } finally {
    phone?.stop();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    fx.close();
    rmSync(root, { recursive: true, force: true });
  }
  out.push({ name: 'bot.rss_e2ee_off', value: await rssWithoutEncryption(file), unit: 'MB', target: '<= 80 (matrix.encryption: off)' });
  return out;
}

/** RSS of a bot with `matrix.encryption: off`, after the same kind of traffic (fewer rounds). */
async function rssWithoutEncryption(file: string): Promise<number> {
  const env = await createBotEnv({ entry: file, encryption: 'off' });
  try {
    await env.registerBot('plain');
    env.writeManifest('plain', '  sys.info: {}\n  sys.health: {}\n');
    const { child, room, botUserId } = await env.startBotInDm('plain');
    env.llm.respond(() => textReply('ok'));
    for (let i = 0; i < 20; i++) {
      const from = env.phone.events.length;
      await env.phone.client.sendTextMessage(room, i % 2 ? '!status' : `hello ${i}`);
      await env.phone.waitFor((e) => env.phone.events.indexOf(e) >= from && e.sender === botUserId && e.type === 'm.room.message');
    }
    await new Promise((r) => setTimeout(r, SETTLE_IDLE_MS + 2000)); // at rest, as bot.rss
    return Math.round(rssKbOf(child.pid ?? 0) / 1024);
  } finally {
    await env.cleanup();
  }
}
