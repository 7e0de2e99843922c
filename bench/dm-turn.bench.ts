/**
 * What an LLM turn in an encrypted DM costs on top of the homeserver itself:
 * `bot.llm_turn_over_floor` = p50 of an LLM turn (the operator's message → one tool call, sys.info, run
 * and audited → the reply with its footer; the LLM answers instantly) minus p50 of the floor, an echo
 * client that answers each message at once in its own encrypted DM (matrix-js-sdk with Rust crypto, the
 * bare tool). Both are timed the same way: reply's server timestamp minus the message's.
 *
 * The floor runs in phases of its own before and after the turns, with a pause between phases: the bot's
 * own work after a reply (the audit anchor state event) would inflate a floor measured next to it. Messages
 * are THINK_MS apart in both, as a person sends them, so that work is not in a turn's time either.
 * Homeserver: the real Synapse at MESHPILOT_TEST_HOMESERVER when set, else the fixture (in this process).
 */
import type { ChildProcess } from 'node:child_process';
import { buildBotBundle } from '../launcher/bundle.js';
import { textReply, toolReply } from '../test/fixtures/anthropic.js';
import { createBotEnv } from '../test/helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from '../test/helpers/phone.js';
import { skipIdleSyncsInPhoneCrypto, waitForKeysOnServer } from './bot.bench.js';
import type { BenchFigure } from './run.js';

export const figures = ['bot.llm_turn_over_floor'];

const FLOOR_ROUNDS = 20;
const TURNS = 30;
const PAUSE_MS = 1500;
/** Between two messages, as a person types: the bot's after-reply work (audit anchor) is not what is measured. */
const THINK_MS = 400;

const say = (line: string): void => void process.stderr.write(`# ${line}\n`);
const p50 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function run(): Promise<BenchFigure[]> {
  const { file } = await buildBotBundle();
  await skipIdleSyncsInPhoneCrypto();
  const env = await createBotEnv({ entry: file, encryption: 'auto', phoneCrypto: true });
  let echo: PhoneHandle | undefined;
  let bot: ChildProcess | undefined;
  try {
    say(`homeserver: ${env.hs.kind === 'synapse' ? `Synapse at ${process.env['MESHPILOT_TEST_HOMESERVER']}` : 'fixture'}`);
    const phone = env.phone;
    await waitForKeysOnServer(env.hs.url, env.operator);

    // The floor: an echo client in its own encrypted DM with the operator.
    const echoUser = await env.hs.registerUser('echo', 'pw-echo');
    echo = await startPhone(env.hs, echoUser, { crypto: true });
    await waitForKeysOnServer(env.hs.url, echoUser);
    const e = echo;
    const { room_id: echoRoom } = await phone.client.createRoom({
      invite: [echoUser.userId], is_direct: true,
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }],
    } as never);
    await phone.waitFor((ev) => ev.room_id === echoRoom && ev.type === 'm.room.member' && ev.state_key === echoUser.userId && (ev.content as { membership?: string }).membership === 'join', 30_000);
    let echoed = 0;
    let echoing = true;
    const answered = new Set<string>();
    const echoLoop = (async () => {
      while (echoing) {
        const ev = await e.waitFor((x) => x.room_id === echoRoom && x.sender === env.operator.userId && x.type === 'm.room.message' && !answered.has(x.event_id), 60_000).catch(() => undefined);
        if (!ev || !echoing) continue;
        answered.add(ev.event_id);
        await e.client.sendTextMessage(echoRoom, `echo ${bodyOf(ev)}`);
        echoed++;
      }
    })();

    // One message at a time; server timestamps of the message and its answer, as the phone saw them.
    const roundTrip = async (room: string, from: string, text: string, match: RegExp): Promise<number> => {
      const idx = phone.events.length;
      const { event_id } = await phone.client.sendTextMessage(room, text);
      const mine = await phone.waitFor((ev) => ev.event_id === event_id);
      const reply = await phone.waitFor((ev) => phone.events.indexOf(ev) >= idx && ev.room_id === room && ev.sender === from && ev.type === 'm.room.message' && match.test(bodyOf(ev)), 30_000);
      return reply.origin_server_ts - mine.origin_server_ts;
    };
    const floorPhase = async (tag: string): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < 3; i++) await roundTrip(echoRoom, echoUser.userId, `warm ${tag}${i}`, /^echo /);
      for (let i = 0; i < FLOOR_ROUNDS; i++) {
        out.push(await roundTrip(echoRoom, echoUser.userId, `ping ${tag}${i}`, /^echo ping/));
        await sleep(THINK_MS);
      }
      return out;
    };

    // The bot, with an LLM that asks for sys.info once and then answers.
    await env.registerBot('turn');
    env.writeManifest('turn', '  sys.info: {}\n  sys.health: {}\n');
    env.llm.respond((req) => {
      const messages = (req.body as { messages?: Array<{ content: unknown }> }).messages ?? [];
      const last = messages.at(-1)?.content;
      const afterTool = Array.isArray(last) && last.some((b) => (b as { type?: string }).type === 'tool_result');
      return afterTool ? textReply('done: the machine is up.') : toolReply([{ name: 'sys_info', input: {} }]);
    });
    const started = await env.startBotInDm('turn');
    bot = started.child;
    for (let i = 0; i < 3; i++) await roundTrip(started.room, started.botUserId, `warm up ${i}`, /^done/);
    await sleep(PAUSE_MS);

    const floorA = await floorPhase('a');
    await sleep(PAUSE_MS);
    const turns: number[] = [];
    for (let i = 0; i < TURNS; i++) {
      const ms = await roundTrip(started.room, started.botUserId, `how is the machine? ${i}`, /^done: the machine is up\.[\s\S]*🧾 #\d+ sys\.info ok/);
      turns.push(ms);
      await sleep(THINK_MS);
    }
    await sleep(PAUSE_MS);
    const floorB = await floorPhase('b');
    echoing = false;
    void echoLoop;

    const floor = p50([...floorA, ...floorB]);
    const turn = p50(turns);
    say(`echo floor p50 ${floor} ms (before ${p50(floorA)}, after ${p50(floorB)}; ${echoed} echoes), LLM turn p50 ${turn} ms (${TURNS} turns, each one tool call)`);
    return [{ name: 'bot.llm_turn_over_floor', value: turn - floor, unit: 'ms', target: '<= 50' }];
  } finally {
    echo?.stop();
    if (bot && bot.exitCode === null) bot.kill('SIGKILL');
    await env.cleanup();
  }
}
