/**
 * Device bot figures, against the homeserver and Anthropic fixtures on loopback with the real bot
 * process: message → reply overhead (LLM answering instantly), `!status` round trip, RSS per bot
 * process, and the time to bring up 20 bots.
 */
import { readFileSync } from 'node:fs';
import { textReply } from '../test/fixtures/anthropic.js';
import type { ClientEvent } from '../test/fixtures/homeserver.js';
import { createBotEnv, waitReady } from '../test/helpers/bot-env.js';
import { buildBotBundle } from '../launcher/bundle.js';
import type { BenchFigure } from './run.js';

export const figures = ['bot.overhead_p50', 'bot.overhead_p99', 'bot.status_roundtrip_p50', 'bot.rss', 'bot.up20', 'bot.rss_e2ee_off'];

const mb = (kb: number): string => (kb / 1024).toFixed(1);

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

export async function run(): Promise<BenchFigure[]> {
  // Measured as `meshpilot up` runs bots: the pre-built bundle, up.ts's nodeArgs, and (through
  // createBotEnv → the supervisor's botExecArgv/botEnv) the same V8 flags and malloc environment.
  // The default config has end-to-end encryption on, so the operator's phone runs crypto too.
  const { file } = await buildBotBundle();
  const env = await createBotEnv({ entry: file, encryption: 'auto', phoneCrypto: true });
  const out: BenchFigure[] = [];
  try {
    const botUser = env.registerBot('bench').userId;
    env.writeManifest('bench', '  sys.info: {}\n  sys.health: {}\n');
    const child = env.startBot('bench');
    await waitReady(child);
    const live = await env.phone.waitFor((e) => e.sender === botUser && /live/.test(String((e.content as { body?: string }).body)));
    const room = live.room_id;
    await env.phone.waitFor((e) => e.room_id === room && e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join');
    env.llm.respond(() => textReply('ok'));

    // One message at a time; overhead = reply's server timestamp - message's server timestamp.
    // Replies are encrypted: matched on the phone's decrypted view, timed by the server's timestamps.
    const roundTrip = async (text: string, match: RegExp): Promise<number> => {
      const from = env.phone.events.length;
      const { event_id } = await env.phone.client.sendTextMessage(room, text);
      const mine = await env.hs.waitFor((e: ClientEvent) => e.event_id === event_id);
      const reply = await env.phone.waitFor((e) => env.phone.events.indexOf(e) >= from && e.sender === botUser && e.type === 'm.room.message' && match.test(String((e.content as { body?: string }).body)));
      const onServer = env.hs.events(room).find((e) => e.event_id === reply.event_id);
      return (onServer?.origin_server_ts ?? reply.origin_server_ts) - mine.origin_server_ts;
    };
    for (let i = 0; i < 5; i++) await roundTrip(`warm ${i}`, /^ok$/);
    const llm: number[] = [];
    for (let i = 0; i < 40; i++) llm.push(await roundTrip(`hello ${i}`, /^ok$/));
    out.push({ name: 'bot.overhead_p50', value: pct(llm, 50), unit: 'ms', target: '<= 50' });
    out.push({ name: 'bot.overhead_p99', value: pct(llm, 99), unit: 'ms', target: '<= 200' });
    const status: number[] = [];
    for (let i = 0; i < 15; i++) status.push(await roundTrip('!status', /🖥 bench/));
    out.push({ name: 'bot.status_roundtrip_p50', value: pct(status, 50), unit: 'ms', target: '<= 300' });
    const rssKb = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0);
    out.push({ name: 'bot.rss', value: Math.round(rssKb / 1024), unit: 'MB', target: '<= 80' });
    // RSS counts the node binary's shared pages in every bot; what each extra bot really costs is its private memory.
    const rollup = readFileSync(`/proc/${child.pid}/smaps_rollup`, 'utf8');
    const priv = ['Private_Clean', 'Private_Dirty'].reduce((sum, k) => sum + Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(rollup)?.[1] ?? 0), 0);
    const parts = rssParts(child.pid ?? 0);
    process.stderr.write(`# bot private memory (USS) ${Math.round(priv / 1024)} MB of ${Math.round(rssKb / 1024)} MB RSS ` +
      `(node binary ${mb(parts.node)}, anonymous ${mb(parts.anon)}, malloc [heap] ${mb(parts.heap)}, other files ${mb(parts.files)} MB)\n`);

    // 20 bots from cold: fork all, wait until every one has synced and reported ready.
    const names = Array.from({ length: 20 }, (_, i) => `up${i}`);
    for (const n of names) { env.registerBot(n); env.writeManifest(n, '  sys.info: {}\n'); }
    // The operator's phone runs in this process too; stop its sync so its own crypto work (20 new
    // encrypted DMs to join and decrypt) does not take the 2 cores from the bots being measured. Its
    // device keys stay on the server, so each bot still does the full key query/claim/share work.
    env.phone.stop();
    const t0 = performance.now();
    await Promise.all(names.map((n) => waitReady(env.startBot(n), 120_000)));
    out.push({ name: 'bot.up20', value: (performance.now() - t0) / 1000, unit: 's', target: '<= 10' });
  } finally {
    await env.cleanup();
  }
  out.push({ name: 'bot.rss_e2ee_off', value: await rssWithoutEncryption(file), unit: 'MB', target: '<= 80 (matrix.encryption: off)' });
  return out;
}

/** RSS of a bot with `matrix.encryption: off`, after the same kind of traffic (fewer rounds). */
async function rssWithoutEncryption(file: string): Promise<number> {
  const env = await createBotEnv({ entry: file, encryption: 'off' });
  try {
    env.registerBot('plain');
    env.writeManifest('plain', '  sys.info: {}\n  sys.health: {}\n');
    const { child, room, botUserId } = await env.startBotInDm('plain');
    env.llm.respond(() => textReply('ok'));
    for (let i = 0; i < 20; i++) {
      const from = env.phone.events.length;
      await env.phone.client.sendTextMessage(room, i % 2 ? '!status' : `hello ${i}`);
      await env.phone.waitFor((e) => env.phone.events.indexOf(e) >= from && e.sender === botUserId && e.type === 'm.room.message');
    }
    const rssKb = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0);
    return Math.round(rssKb / 1024);
  } finally {
    await env.cleanup();
  }
}
