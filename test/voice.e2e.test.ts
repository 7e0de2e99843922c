/**
 * Voice end to end: the operator's phone (matrix-js-sdk) uploads an Ogg/Opus voice message (espeak-ng
 * speech encoded like Element: "Voice message", no extension, org.matrix.msc3245.voice) to the
 * homeserver fixture; the real device bot process downloads it, decodes it with ffmpeg, recognises
 * it with pocketsphinx and the grammar from its manifest, posts what it heard and runs it (no LLM:
 * the grammar maps it to an explicit command), with the transcript in the audit context.
 * The last part restarts the bot on the whisper-http engine against the fixture server.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { writeConfig } from '../capabilities/config.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { buildBotBundle } from '../launcher/bundle.js';
import { speakOgg, startWhisperFixture, type WhisperFixture } from './fixtures/whisper-http.js';
import { createBotEnv, waitReady, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { mediaDownloadPath } from './helpers/test-homeserver.js';

let env: BotEnv;
let room: string;
let bot: ReturnType<BotEnv['startBot']>;
let botUserId: string;
let whisper: WhisperFixture;

const MAX_BYTES = 256 * 1024;
const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

function setVoiceConfig(voice: Record<string, unknown>): void {
  const file = path.join(env.home, 'config.yaml');
  const cfg = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeConfig(file, { ...cfg, voice });
}

async function upload(bytes: Buffer, contentType: string): Promise<string> {
  const res = await fetch(`${env.hs.url}/_matrix/media/v3/upload`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${env.operator.accessToken}`, 'Content-Type': contentType },
    body: bytes,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { content_uri: string }).content_uri;
}

/** Sends an Element-style voice message; returns its event id. */
async function sendVoice(bytes: Buffer, info: { mimetype: string; size?: number; duration?: number }): Promise<string> {
  const mxc = await upload(bytes, info.mimetype);
  const content = {
    msgtype: 'm.audio',
    body: 'Voice message',
    url: mxc,
    info,
    'org.matrix.msc1767.audio': { duration: info.duration ?? 0, waveform: [] },
    'org.matrix.msc3245.voice': {},
  };
  const r = await env.phone.client.sendMessage(room, content as never);
  return r.event_id;
}

async function speak(text: string, name: string): Promise<{ bytes: Buffer; durationMs: number }> {
  return speakOgg(text, env.work, name);
}

async function botSays(match: RegExp, sinceIdx: number, ms = 20_000): Promise<ClientEvent> {
  return env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= sinceIdx && match.test(bodyOf(e)), ms);
}

function auditTail(n = 50) {
  const db = openDatabase(path.join(env.home, 'meshpilot.db'));
  try {
    return new SqliteAuditLog(db).tail(n, 'box');
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false });
  whisper = await startWhisperFixture({ apiKey: 'sk-voice' });
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', ['  sys.info: {}', '  sys.health: {}', `  fs.list: { paths_allowed: ["${env.work}/**"] }`, ''].join('\n'));
  setVoiceConfig({ engine: 'pocketsphinx', max_bytes: MAX_BYTES, max_duration_s: 20, min_confidence: 0.7 });
  // The phone accepts the DM the bot creates (the helper auto-accepts invites).
  ({ child: bot, room } = await env.startBotInDm('box'));
}, 60_000);

afterAll(async () => {
  await whisper?.close();
  await env?.cleanup();
});

describe('voice messages end to end (pocketsphinx)', () => {
  it('"Voice message" (Ogg/Opus, no extension) → transcript posted → sys.info run and audited with the transcript', async () => {
    const v = await speak('check disk usage', 'disk');
    const idx = env.phone.events.length;
    const downloadsBefore = env.hs.requests.filter((r) => /\/media\/(?:v3\/|r0\/)?download\//.test(r.path)).length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    const heard = await botSays(/^🎙/, idx);
    expect(bodyOf(heard)).toBe('🎙 "check disk usage" → !cap sys.info');
    const reply = await botSays(/🧾 #\d+ sys\.info ok/, idx);
    expect(env.phone.events.indexOf(reply)).toBeGreaterThan(env.phone.events.indexOf(heard));
    // Downloaded once, through the media endpoint the server advertises (authenticated where it has it).
    const downloads = env.hs.requests.filter((r) => /\/media\/(?:v3\/|r0\/)?download\//.test(r.path)).slice(downloadsBefore);
    expect(downloads.map((r) => r.path.startsWith(mediaDownloadPath(env.hs)))).toEqual([true]);
    const seq = Number(/🧾 #(\d+) sys\.info ok/.exec(bodyOf(reply))![1]);
    const entry = auditTail().find((e) => e.seq === seq);
    expect(entry).toMatchObject({ capability: 'sys.info', outcome: 'ok', actor: env.operator.userId });
    expect(entry?.context).toMatchObject({ transcript: 'check disk usage', engine: 'pocketsphinx', confidence: 1, command: '!cap sys.info' });
  }, 40_000);

  it('a path from the manifest: "list files in work" → fs.list of the work dir', async () => {
    const v = await speak('list files in work', 'list');
    const idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toBe(`🎙 "list files in work" → !cap fs.list path=${env.work}`);
    await botSays(/🧾 #\d+ fs\.list ok/, idx);
    const entry = auditTail().filter((e) => e.capability === 'fs.list').at(-1);
    expect(entry?.context).toMatchObject({ transcript: 'list files in work', engine: 'pocketsphinx' });
  }, 40_000);

  it('oversize: refused before downloading when info.size says so, and after when the bytes say so', async () => {
    const v = await speak('check disk usage', 'big');
    let idx = env.phone.events.length;
    const downloadsBefore = env.hs.requests.filter((r) => /\/media\/(?:v3\/|r0\/)?download\//.test(r.path)).length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: 20 * 1024 * 1024, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/That audio is 20\.0 MB; I only take voice messages up to 0\.3 MB/);
    expect(env.hs.requests.filter((r) => /\/media\/(?:v3\/|r0\/)?download\//.test(r.path)).length).toBe(downloadsBefore);

    idx = env.phone.events.length;
    const padded = Buffer.concat([v.bytes, Buffer.alloc(MAX_BYTES + 1000, 0)]);
    await sendVoice(padded, { mimetype: 'audio/ogg' });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/over 0\.3 MB/);

    idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: 300_000 });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/300 s long; I only take voice messages up to 20 s/);
  }, 40_000);

  it('not audio although it says audio/ogg: a clear message', async () => {
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(200, 1)]);
    const idx = env.phone.events.length;
    await sendVoice(png, { mimetype: 'audio/ogg', size: png.length, duration: 2000 });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/says it is audio\/ogg but its content is a PNG image, not audio I can decode/);
  }, 30_000);

  it('a corrupt Ogg and speech with no command words: clear messages, nothing run', async () => {
    const before = auditTail().length;
    let idx = env.phone.events.length;
    const bad = Buffer.concat([Buffer.from('OggS'), Buffer.alloc(3000, 9)]);
    await sendVoice(bad, { mimetype: 'audio/ogg', size: bad.length, duration: 2000 });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/Could not decode the ogg audio/);
    idx = env.phone.events.length;
    const v = await speak('check the disk space usage now', 'none');
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/could not make out any words/);
    expect(auditTail().length).toBe(before);
  }, 40_000);

  it('low confidence → "Did you mean …?"; yes runs it (audited), ❌ drops it', async () => {
    // Speech the grammar cannot match, forced onto its nearest command (which runs sys.info) at 50%.
    const v = await speak('give me the system info soon maybe', 'vague');
    let idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    const ask = await botSays(/^🎙/, idx);
    expect(bodyOf(ask)).toMatch(/^🎙 Did you mean ".+" → !(cap sys\.info|status)\? \(confidence 50%\) Answer yes or no, or react ✅\/❌\.$/);
    const heard = /Did you mean "(.+)"/.exec(bodyOf(ask))![1]!;
    await new Promise((r) => setTimeout(r, 500));
    const infoBefore = auditTail().filter((e) => e.capability === 'sys.info' && e.outcome !== 'started').length;
    expect(infoBefore).toBe(1); // nothing ran while the question is open
    await env.phone.client.sendTextMessage(room, 'yes');
    const reply = await botSays(/🧾 #\d+ sys\.info ok/, idx);
    const seq = Number(/🧾 #(\d+) sys\.info ok/.exec(bodyOf(reply))![1]);
    expect(auditTail().find((e) => e.seq === seq)?.context).toMatchObject({ transcript: heard, engine: 'pocketsphinx', confidence: 0.5, confirmed_by: env.operator.userId });

    idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    const ask2 = await botSays(/Did you mean/, idx);
    await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask2.event_id, key: '❌' } } as never);
    await botSays(/^🎙 Dropped\./, idx);
    await new Promise((r) => setTimeout(r, 800));
    expect(auditTail().filter((e) => e.capability === 'sys.info' && e.outcome !== 'started').length).toBe(infoBefore + 1);
  }, 60_000);
});

describe('voice messages end to end (whisper-http)', () => {
  beforeAll(async () => {
    bot.kill('SIGKILL');
    await new Promise((r) => bot.once('exit', r));
    setVoiceConfig({ engine: 'whisper-http', whisper: { url: whisper.url, api_key: 'sk-voice', model: 'whisper-test', language: 'en', timeout_s: 5 }, max_bytes: MAX_BYTES, max_duration_s: 20, min_confidence: 0.6 });
    // From the built bundle, as `meshpilot up` runs bots: the engine loads undici (CommonJS) on first
    // use, and a dynamic import of CommonJS gives only `default` there (its named exports did not exist).
    const { file } = await buildBotBundle();
    bot = env.startBot('box', { entry: file });
    await waitReady(bot);
  }, 90_000);

  it('transcribes through the endpoint (multipart WAV) and runs the mapped command', async () => {
    whisper.enqueue({ text: ' Show me the memory. ', segments: [{ avg_logprob: -0.1, no_speech_prob: 0.01 }] });
    const v = await speak('show me the memory', 'wh');
    const idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toBe('🎙 "Show me the memory." → !cap sys.info');
    const reply = await botSays(/🧾 #\d+ sys\.info ok/, idx);
    const seq = Number(/🧾 #(\d+) sys\.info ok/.exec(bodyOf(reply))![1]);
    const ctx = auditTail().find((e) => e.seq === seq)?.context as Record<string, unknown>;
    expect(ctx).toMatchObject({ transcript: 'Show me the memory.', engine: 'whisper-http' });
    expect(ctx['confidence']).toBeCloseTo(Math.exp(-0.1) * 0.99, 5);
    const req = whisper.requests.at(-1)!;
    expect(req).toMatchObject({ authorization: 'Bearer sk-voice', model: 'whisper-test', language: 'en', responseFormat: 'json' });
    expect(req.wav).toMatchObject({ sampleRate: 16000, channels: 1, bitsPerSample: 16 });
  }, 30_000);

  it('engine down or failing: a clear message, never silence', async () => {
    whisper.enqueue({ status: 503, body: 'overloaded' });
    const v = await speak('show memory', 'wh2');
    let idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/Transcription failed \(whisper-http\): the transcription service failed \(HTTP 503\)/);
    whisper.enqueue({ text: '' });
    idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    expect(bodyOf(await botSays(/^🎙/, idx))).toMatch(/could not make out any words/);
  }, 30_000);

  it('low avg_logprob → "Did you mean …?" → ✅ runs it', async () => {
    whisper.enqueue({ text: 'check health', segments: [{ avg_logprob: -1.5, no_speech_prob: 0.2 }] });
    const v = await speak('check health', 'wh3');
    const idx = env.phone.events.length;
    await sendVoice(v.bytes, { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs });
    const ask = await botSays(/Did you mean "check health" → !cap sys\.health\? \(confidence 18%\)/, idx);
    await env.phone.client.sendEvent(room, 'm.reaction' as never, { 'm.relates_to': { rel_type: 'm.annotation', event_id: ask.event_id, key: '✅' } } as never);
    const reply = await botSays(/🧾 #\d+ sys\.health ok/, idx);
    const seq = Number(/🧾 #(\d+) sys\.health ok/.exec(bodyOf(reply))![1]);
    expect(auditTail().find((e) => e.seq === seq)?.context).toMatchObject({ transcript: 'check health', engine: 'whisper-http' });
  }, 30_000);
});
