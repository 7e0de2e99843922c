/**
 * Voice messages from a citizen, end to end: the real device bot process, the Matrix test server, the
 * citizen's own phone (matrix-js-sdk) sending Element-style voice messages (espeak-ng → Ogg/Opus), the
 * whisper-http engine against the fixture server (scripted transcripts). A citizen the device grants
 * something gets the same voice handling as an operator, limited to their own tools:
 * - a command their level is granted runs, audited as them with the transcript;
 * - a command only operators have is not in their grammar: it is not mapped (and does not run), while
 *   the operator's same words map to it;
 * - their "Did you mean …?" is answered by their own ✅ reaction.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { writeConfig } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { layout } from '../capabilities/home.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { speakOgg, startWhisperFixture, type WhisperFixture } from './fixtures/whisper-http.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import type { RegisteredUser } from './helpers/test-homeserver.js';

let env: BotEnv;
let whisper: WhisperFixture;
let botUserId: string;
let opRoom: string;
let ann: RegisteredUser;
let annPhone: PhoneHandle;
let annRoom: string;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

function auditTail(n = 100) {
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  try {
    return new SqliteAuditLog(db).tail(n, 'box');
  } finally {
    db.close();
  }
}

/** Uploads an Element-style voice message as `user` and sends it into `room`. */
async function sendVoice(phone: PhoneHandle, user: RegisteredUser, room: string, name: string): Promise<void> {
  const v = await speakOgg('hello there', env.work, name);
  const res = await fetch(`${env.hs.url}/_matrix/media/v3/upload`, {
    method: 'POST', headers: { Authorization: `Bearer ${user.accessToken}`, 'Content-Type': 'audio/ogg' }, body: v.bytes,
  });
  expect(res.status).toBe(200);
  const mxc = ((await res.json()) as { content_uri: string }).content_uri;
  await phone.client.sendMessage(room, {
    msgtype: 'm.audio', body: 'Voice message', url: mxc, info: { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs },
    'org.matrix.msc1767.audio': { duration: v.durationMs, waveform: [] }, 'org.matrix.msc3245.voice': {},
  } as never);
}

function saysIn(phone: PhoneHandle, room: string, match: RegExp, since: number, ms = 20_000): Promise<ClientEvent> {
  return phone.waitFor((e) => e.room_id === room && fromBot(e) && phone.events.indexOf(e) >= since && match.test(bodyOf(e)), ms);
}

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false, approvalTimeoutS: 30 });
  whisper = await startWhisperFixture({ apiKey: 'sk-voice' });
  botUserId = (await env.registerBot('box')).userId;
  ann = await env.hs.registerUser('ann', 'pw-ann');
  const file = layout(env.home).config;
  const config = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeConfig(file, {
    ...config,
    users: { [ann.userId]: 'citizen' },
    voice: { engine: 'whisper-http', whisper: { url: whisper.url, api_key: 'sk-voice', model: 'whisper-test', timeout_s: 5 }, max_bytes: 256 * 1024, max_duration_s: 20, min_confidence: 0.6 },
  });
  env.writeManifest('box', [
    '  sys.info: { tiers: [citizen, operator] }',
    '  sys.health: {}',
    '',
  ].join('\n'));
  ({ room: opRoom } = await env.startBotInDm('box'));
  annPhone = await startPhone(env.hs, ann);
  const res = await fetch(`${env.hs.url}/_matrix/client/v3/createRoom`, {
    method: 'POST', headers: { Authorization: `Bearer ${ann.accessToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ invite: [botUserId], is_direct: true, preset: 'trusted_private_chat' }),
  });
  annRoom = ((await res.json()) as { room_id: string }).room_id;
  await annPhone.waitFor((e) => e.room_id === annRoom && e.type === 'm.room.member' && e.state_key === botUserId && (e.content as { membership?: string }).membership === 'join', 20_000);
}, 90_000);

afterAll(async () => {
  annPhone?.stop();
  await whisper?.close();
  await env?.cleanup();
});

describe('voice messages from a citizen', () => {
  it('a granted command runs from the citizen\'s voice message, audited as them with the transcript', async () => {
    const before = whisper.requests.length;
    whisper.enqueue({ text: 'Show me the memory.', segments: [{ avg_logprob: -0.05, no_speech_prob: 0.01 }] });
    const idx = annPhone.events.length;
    await sendVoice(annPhone, ann, annRoom, 'ann1');
    expect(bodyOf(await saysIn(annPhone, annRoom, /^🎙/, idx))).toBe('🎙 "Show me the memory." → !cap sys.info');
    const reply = await saysIn(annPhone, annRoom, /🧾 #\d+ sys\.info ok/, idx);
    expect(whisper.requests.length).toBe(before + 1);
    const seq = Number(/🧾 #(\d+) sys\.info ok/.exec(bodyOf(reply))![1]);
    const entry = auditTail().find((e) => e.seq === seq);
    expect(entry).toMatchObject({ capability: 'sys.info', outcome: 'ok', actor: ann.userId });
    expect(entry?.context).toMatchObject({ transcript: 'Show me the memory.', engine: 'whisper-http', command: '!cap sys.info' });
  }, 40_000);

  it('an operator-only command is not in the citizen\'s grammar: not mapped, not run; the operator\'s same words map to it', async () => {
    whisper.enqueue({ text: 'check health', segments: [{ avg_logprob: -0.05, no_speech_prob: 0.01 }] });
    let idx = annPhone.events.length;
    await sendVoice(annPhone, ann, annRoom, 'ann2');
    expect(bodyOf(await saysIn(annPhone, annRoom, /^🎙/, idx))).toBe('🎙 "check health"');
    expect(bodyOf(await saysIn(annPhone, annRoom, /No LLM is configured/, idx))).toContain('I only understand commands');
    expect(auditTail().filter((e) => e.capability === 'sys.health')).toEqual([]);

    whisper.enqueue({ text: 'check health', segments: [{ avg_logprob: -0.05, no_speech_prob: 0.01 }] });
    idx = env.phone.events.length;
    await sendVoice(env.phone, env.operator, opRoom, 'op1');
    expect(bodyOf(await saysIn(env.phone, opRoom, /^🎙/, idx))).toBe('🎙 "check health" → !cap sys.health');
    await saysIn(env.phone, opRoom, /🧾 #\d+ sys\.health ok/, idx);
    expect(auditTail().filter((e) => e.capability === 'sys.health' && e.outcome === 'ok').map((e) => e.actor)).toEqual([env.operator.userId]);
  }, 40_000);

  it('the citizen\'s own ✅ answers their "Did you mean …?"', async () => {
    whisper.enqueue({ text: 'show me the memory', segments: [{ avg_logprob: -1.5, no_speech_prob: 0.2 }] });
    const idx = annPhone.events.length;
    await sendVoice(annPhone, ann, annRoom, 'ann3');
    const ask = await saysIn(annPhone, annRoom, /Did you mean "show me the memory" → !cap sys\.info\? \(confidence 18%\)/, idx);
    await annPhone.client.sendEvent(annRoom, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask.event_id, key: '✅' } } as never);
    const reply = await saysIn(annPhone, annRoom, /🧾 #\d+ sys\.info ok/, idx);
    const seq = Number(/🧾 #(\d+) sys\.info ok/.exec(bodyOf(reply))![1]);
    const entry = auditTail().find((e) => e.seq === seq);
    expect(entry).toMatchObject({ actor: ann.userId });
    expect(entry?.context).toMatchObject({ transcript: 'show me the memory', confirmed_by: ann.userId });
  }, 40_000);
});
