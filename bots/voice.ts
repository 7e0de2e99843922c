/**
 * Voice messages to commands. The `m.audio` of anyone who may talk to the bot (an operator, or a user
 * below operator whom the device grants something: capabilities/levels.ts mayTalk) (Element voice messages included: Ogg/Opus named
 * "Voice message", no extension) is checked against the size/duration limits, downloaded through the
 * media endpoint the homeserver supports, recognised by its bytes (not its name), decoded with ffmpeg
 * to 16 kHz mono 16-bit WAV (argv, no shell, timeout), and transcribed by the configured engine:
 *
 *   - pocketsphinx (offline, default): a JSGF grammar of what this bot can do, generated from its
 *     manifest (bots/voice-grammar.ts), with a dictionary limited to the grammar's words;
 *   - whisper-http: any OpenAI-compatible /v1/audio/transcriptions endpoint (multipart via undici).
 *
 * The bot posts what it heard (`🎙 "check disk usage"`), then handles it as if typed: plain words for
 * the LLM loop, or — with no LLM — the explicit command the grammar maps it to. Below min_confidence it
 * asks "Did you mean …?" first (yes/no or ✅/❌). The transcript, engine and confidence go into the audit
 * context of whatever it triggers. Every failure gets a message: audio is never dropped silently.
 *
 * Below operator level a voice message is handled as that person's text: the grammar holds only the
 * capabilities their level is granted (one grammar per set of capabilities), and what it triggers goes
 * through the same level checks, approvals and audit as their typed words. A "Did you mean …?" is
 * answered by the person who asked (operators may answer each other's).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { createHash } from 'node:crypto';
import { MeshpilotError, toMpError } from '../capabilities/errors.js';
import { grants, isStaff, type Level } from '../capabilities/levels.js';
import type { Manifest } from '../capabilities/manifest.js';
import type { ChatMessage, DeviceBot } from './device-bot.js';
import type { MatrixMessage } from './matrix/index.js';
import { buildCommandGrammar, normalizeTranscript, releaseCmuDict, type CommandGrammar } from './voice-grammar.js';
import type { VoiceConfig } from '../capabilities/config.js';

// ------------------------------------------------------------------------------------------- format detection

export interface AudioFormat {
  /** Short name for people. */
  name: 'ogg' | 'wav' | 'mp3' | 'aac' | 'flac' | 'webm' | 'mp4' | 'amr';
  /** The ffmpeg demuxer to force (no probing of other formats, no playlists). */
  demuxer: string;
}

/** The container format from the first bytes (magic numbers), or undefined when it is no audio we know. */
export function detectAudioFormat(b: Uint8Array): AudioFormat | undefined {
  const ascii = (o: number, n: number): string => Buffer.from(b.subarray(o, o + n)).toString('latin1');
  if (b.length < 12) return undefined;
  if (ascii(0, 4) === 'OggS') return { name: 'ogg', demuxer: 'ogg' };
  if (ascii(0, 4) === 'RIFF' && ascii(8, 4) === 'WAVE') return { name: 'wav', demuxer: 'wav' };
  if (ascii(0, 4) === 'fLaC') return { name: 'flac', demuxer: 'flac' };
  if (b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) return { name: 'webm', demuxer: 'matroska' };
  if (ascii(4, 4) === 'ftyp') return { name: 'mp4', demuxer: 'mov' };
  if (ascii(0, 6) === '#!AMR\n') return { name: 'amr', demuxer: 'amr' };
  if (ascii(0, 3) === 'ID3') return { name: 'mp3', demuxer: 'mp3' };
  if (b[0] === 0xff && (b[1]! & 0xf6) === 0xf0) return { name: 'aac', demuxer: 'aac' }; // ADTS: sync 12 bits, layer 00
  if (b[0] === 0xff && (b[1]! & 0xe0) === 0xe0 && (b[1]! & 0x06) !== 0) return { name: 'mp3', demuxer: 'mp3' }; // MPEG audio frame sync
  return undefined;
}

/** What some bytes look like, for the refusal message. */
export function describeBytes(b: Uint8Array): string {
  const head = Buffer.from(b.subarray(0, 16));
  if (head.length === 0) return 'an empty file';
  if (head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'a PNG image';
  if (head[0] === 0xff && head[1] === 0xd8) return 'a JPEG image';
  if (head.toString('latin1', 0, 4) === '%PDF') return 'a PDF document';
  if (head.toString('latin1', 0, 2) === 'PK') return 'a ZIP archive';
  if (head.toString('latin1', 0, 4) === 'GIF8') return 'a GIF image';
  const sample = Buffer.from(b.subarray(0, 512));
  if (sample.every((c) => c === 9 || c === 10 || c === 13 || (c >= 32 && c < 127) || c >= 128)) return 'text';
  return 'data of an unknown kind';
}

// ------------------------------------------------------------------------------------------- processes

interface ProcResult { code: number | null; stdout: string; stderr: string; timedOut: boolean }

/** Runs argv without a shell, with a timeout (SIGKILL) and bounded output. */
export function runProcess(argv: readonly string[], timeoutMs: number, maxOutput = 256 * 1024): Promise<ProcResult> {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], shell: false });
    } catch (err) {
      resolve({ code: null, stdout: '', stderr: toMpError(err).message, timedOut: false });
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => { if (stdout.length < maxOutput) stdout += d.toString('utf8'); });
    child.stderr.on('data', (d: Buffer) => { if (stderr.length < maxOutput) stderr += d.toString('utf8'); });
    child.on('error', (err) => {
      clearTimeout(t);
      resolve({ code: null, stdout, stderr: stderr || err.message, timedOut });
    });
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

/** Seconds of audio in a PCM WAV (from its fmt and data chunks); undefined when it is not one. */
export function wavDurationS(wav: Buffer): number | undefined {
  if (wav.length < 12 || wav.toString('latin1', 0, 4) !== 'RIFF' || wav.toString('latin1', 8, 12) !== 'WAVE') return undefined;
  let off = 12;
  let byteRate = 0;
  while (off + 8 <= wav.length) {
    const id = wav.toString('latin1', off, off + 4);
    let size = wav.readUInt32LE(off + 4);
    if (id === 'fmt ' && off + 20 <= wav.length) byteRate = wav.readUInt32LE(off + 16);
    if (id === 'data') {
      // ffmpeg writing to a pipe leaves the size unset: take what is there.
      if (size === 0xffffffff || off + 8 + size > wav.length) size = wav.length - off - 8;
      return byteRate > 0 ? size / byteRate : undefined;
    }
    off += 8 + size + (size % 2);
  }
  return undefined;
}

export interface DecodeOptions { maxDurationS: number; timeoutMs?: number; ffmpeg?: string }

/** Decodes `input` (of a detected format) to 16 kHz mono s16 WAV at `output`; returns its duration. */
export async function decodeToWav(input: string, format: AudioFormat, output: string, o: DecodeOptions): Promise<{ durationS: number }> {
  const argv = [
    o.ffmpeg ?? 'ffmpeg', '-nostdin', '-hide_banner', '-loglevel', 'error',
    '-protocol_whitelist', 'file', '-f', format.demuxer, '-i', input,
    // One second over the limit is enough to know it is too long, without decoding an hour of audio.
    '-t', String(o.maxDurationS + 1),
    '-vn', '-ac', '1', '-ar', '16000', '-c:a', 'pcm_s16le', '-f', 'wav', '-y', output,
  ];
  const r = await runProcess(argv, o.timeoutMs ?? 30_000);
  if (r.timedOut) throw new MeshpilotError('timeout', 'decoding the audio took too long');
  if (r.code !== 0) {
    const line = r.stderr.split('\n').map((l) => l.trim()).filter(Boolean).slice(-1)[0] ?? `exit code ${r.code}`;
    if (r.code === null && /ENOENT/.test(r.stderr)) throw new MeshpilotError('config', 'ffmpeg is not installed on the launcher');
    throw new MeshpilotError('exec_failed', `could not decode the ${format.name} audio (ffmpeg: ${line.slice(0, 200)})`);
  }
  const durationS = wavDurationS(readFileSync(output));
  if (durationS === undefined) throw new MeshpilotError('exec_failed', `could not decode the ${format.name} audio (no audio stream)`);
  return { durationS };
}

// ------------------------------------------------------------------------------------------- engines

export interface Transcript {
  text: string;
  /** 0 … 1 where the engine gives one. */
  confidence?: number;
}

export interface SttEngine {
  readonly name: 'pocketsphinx' | 'whisper-http';
  /** `grammar`: the speaker's commands (engines that recognise against a grammar use it). */
  transcribe(wavPath: string, grammar?: CommandGrammar): Promise<Transcript>;
}

export const POCKETSPHINX_HMM = '/usr/share/pocketsphinx/model/en-us/en-us';

/** Wide beams: with the default ones, valid commands ending in a long name sometimes give no result at all. */
const WIDE_BEAMS = ['-beam', '1e-80', '-wbeam', '1e-60', '-pbeam', '1e-80'];

/**
 * pocketsphinx_continuous (Debian's 0.8) with the command grammar. Two passes run at once: wide beams
 * (the transcript) and the default, narrower beams (a check): when the narrow pass finds the same
 * phrase the transcript is confident (1); when it finds nothing or something else, the wide pass only
 * forced the audio onto the nearest command (0.5), which is below the default min_confidence.
 */
export class PocketsphinxEngine implements SttEngine {
  readonly name = 'pocketsphinx' as const;
  private files: { jsgf: string; dict: string } | undefined;
  /** Each grammar's files (a speaker below operator has a smaller grammar than an operator). */
  private readonly byGrammar = new WeakMap<CommandGrammar, { jsgf: string; dict: string }>();

  constructor(private readonly o: { dir: string; binary?: string; hmm?: string; timeoutMs?: number }) {}

  /** Writes the grammar and its dictionary (call again when the manifest changes); the last one is the default. */
  setGrammar(g: CommandGrammar): void {
    mkdirSync(this.o.dir, { recursive: true, mode: 0o700 });
    // The first grammar keeps the historical names; others get their own (by content), so two speakers never share files.
    const tag = this.files === undefined ? '' : `-${createHash('sha256').update(g.jsgf).digest('hex').slice(0, 12)}`;
    const jsgf = path.join(this.o.dir, `commands${tag}.gram`);
    const dict = path.join(this.o.dir, `commands${tag}.dict`);
    writeFileSync(jsgf, g.jsgf);
    writeFileSync(dict, g.dict);
    this.files = { jsgf, dict };
    this.byGrammar.set(g, this.files);
  }

  private async pass(wav: string, extra: string[], grammar?: CommandGrammar): Promise<string> {
    const files = (grammar ? this.byGrammar.get(grammar) : undefined) ?? this.files;
    if (!files) throw new MeshpilotError('config', 'no voice grammar has been built');
    const argv = [this.o.binary ?? 'pocketsphinx_continuous', '-infile', wav, '-jsgf', files.jsgf, '-dict', files.dict, '-logfn', '/dev/null', ...extra];
    if (this.o.hmm) argv.push('-hmm', this.o.hmm);
    const r = await runProcess(argv, this.o.timeoutMs ?? 30_000);
    if (r.timedOut) throw new MeshpilotError('timeout', 'speech recognition took too long');
    if (r.code !== 0) {
      if (r.code === null && /ENOENT/.test(r.stderr)) throw new MeshpilotError('config', 'pocketsphinx is not installed on the launcher (apt install pocketsphinx pocketsphinx-en-us)');
      const line = r.stderr.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('ERROR')).slice(-1)[0] ?? `exit code ${r.code}`;
      throw new MeshpilotError('exec_failed', `speech recognition failed (pocketsphinx: ${line.slice(0, 200)})`);
    }
    // One line per utterance segment the recogniser's voice detector found.
    return normalizeTranscript(r.stdout.split('\n').filter((l) => l.trim() && !l.startsWith('INFO') && !l.startsWith('ERROR')).join(' '));
  }

  async transcribe(wavPath: string, grammar?: CommandGrammar): Promise<Transcript> {
    const [wide, narrow] = await Promise.all([this.pass(wavPath, WIDE_BEAMS, grammar), this.pass(wavPath, [], grammar)]);
    if (!wide) return { text: '', confidence: 0 };
    return { text: wide, confidence: narrow === wide ? 1 : 0.5 };
  }
}

const whisperResponse = z.looseObject({
  text: z.string().max(100_000),
  segments: z.array(z.looseObject({ avg_logprob: z.number().optional(), no_speech_prob: z.number().optional() })).max(10_000).optional(),
});

/** The transcription URL: a base URL gets `/v1/audio/transcriptions`. */
export function whisperEndpoint(url: string): string {
  const u = url.replace(/\/+$/, '');
  if (/\/audio\/transcriptions$/.test(u)) return u;
  if (/\/v1$/.test(u)) return `${u}/audio/transcriptions`;
  return `${u}/v1/audio/transcriptions`;
}

/** An OpenAI-compatible /v1/audio/transcriptions endpoint (whisper.cpp server, faster-whisper, OpenAI). */
export class WhisperHttpEngine implements SttEngine {
  readonly name = 'whisper-http' as const;
  constructor(private readonly o: { url: string; apiKey?: string; model: string; language?: string; timeoutMs: number }) {}

  async transcribe(wavPath: string): Promise<Transcript> {
    // Loaded on first use: most bots never talk to a transcription service. undici is CommonJS: from the
    // bot bundle (ESM) a dynamic import of it has only `default` (module.exports), so read that.
    const undici = await import('undici');
    const { fetch, FormData } = ((undici as unknown as { default?: typeof undici }).default ?? undici);
    const form = new FormData();
    form.append('file', new Blob([readFileSync(wavPath)], { type: 'audio/wav' }), 'voice.wav');
    form.append('model', this.o.model);
    if (this.o.language) form.append('language', this.o.language);
    form.append('response_format', 'json');
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (this.o.apiKey) headers['Authorization'] = `Bearer ${this.o.apiKey}`;
    let res;
    try {
      res = await fetch(whisperEndpoint(this.o.url), { method: 'POST', body: form, headers, signal: AbortSignal.timeout(this.o.timeoutMs) });
    } catch (err) {
      const e = err as { name?: string };
      if (e.name === 'TimeoutError' || e.name === 'AbortError') throw new MeshpilotError('timeout', `the transcription service did not answer within ${Math.round(this.o.timeoutMs / 1000)} s`);
      throw new MeshpilotError('unreachable', `the transcription service is unreachable (${toMpError(err).message.slice(0, 200)})`);
    }
    const text = (await res.text()).slice(0, 200_000);
    if (!res.ok) {
      if (res.status === 401 || res.status === 403) throw new MeshpilotError('auth', `the transcription service refused the API key (HTTP ${res.status})`);
      throw new MeshpilotError('unreachable', `the transcription service failed (HTTP ${res.status})`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new MeshpilotError('unreachable', 'the transcription service sent something that is not JSON');
    }
    const p = whisperResponse.safeParse(json);
    if (!p.success) throw new MeshpilotError('unreachable', 'the transcription service sent no text');
    let confidence: number | undefined;
    const segs = p.data.segments ?? [];
    const lp = segs.map((s) => s.avg_logprob).filter((x): x is number => typeof x === 'number');
    const ns = segs.map((s) => s.no_speech_prob).filter((x): x is number => typeof x === 'number');
    if (lp.length || ns.length) {
      const avg = lp.length ? lp.reduce((a, b) => a + b, 0) / lp.length : 0;
      const noSpeech = ns.length ? Math.max(...ns) : 0;
      confidence = Math.max(0, Math.min(1, Math.exp(avg) * (1 - noSpeech)));
    }
    return { text: p.data.text.trim().slice(0, 2000), ...(confidence !== undefined ? { confidence } : {}) };
  }
}

// ------------------------------------------------------------------------------------------- the handler

export interface VoiceHandlerOptions {
  config: VoiceConfig;
  device: string;
  manifest: () => Manifest | undefined;
  /** Capabilities enabled on the device (the grammar offers only those; below operator, only those granted to the speaker's level). */
  allowed: () => string[];
  /** An LLM is configured: transcripts go to it as plain words. */
  llm: boolean;
  download: (mxc: string, opts: { maxBytes: number }) => Promise<{ bytes: Buffer; contentType: string }>;
  sendText: (roomId: string, text: string) => Promise<string>;
  /** Where the grammar, dictionary and temp audio go (created 0700). */
  dir: string;
  logger: Logger;
  /** Tests and benches: a different engine. */
  engine?: SttEngine;
  confirmTimeoutMs?: number;
}

export interface VoiceContext {
  transcript: string;
  engine: string;
  confidence: number | null;
  [k: string]: unknown;
}

interface Pending {
  questionId: string;
  sender: string;
  msg: ChatMessage;
  timer: NodeJS.Timeout;
}

// Emoji written as escapes: one non-ASCII character makes V8 hold the whole bundle chunk's source as
// two-byte text (+430 KB per bot).
const YES = /^(y|yes|yeah|yep|sure|ok|okay|do it|go|go ahead|\u2705|\uD83D\uDC4D|\u2714\uFE0F)$/i; // ✅ 👍 ✔️
const NO = /^(n|no|nope|cancel|stop|don't|dont|\u274C|\uD83D\uDC4E|\uD83D\uDEAB)$/i; // ❌ 👎 🚫
const YES_KEYS = new Set(['✅', '✔️', '👍', '✅️']);
const NO_KEYS = new Set(['❌', '✖️', '👎', '🚫']);

export interface VoiceHandler {
  handle(m: MatrixMessage, bot: DeviceBot): Promise<void>;
  /** The current grammar for a level (the operators' without one; built on first use, rebuilt when the manifest changes). */
  grammar(level?: Level | null): CommandGrammar | undefined;
  /** Ends pending questions (shutdown). */
  close(): void;
}

export function createVoiceHandler(o: VoiceHandlerOptions): VoiceHandler {
  const cfg = o.config;
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const engine: SttEngine = o.engine ?? (cfg.engine === 'whisper-http' && cfg.whisper
    ? new WhisperHttpEngine({ url: cfg.whisper.url, ...(cfg.whisper.api_key ? { apiKey: cfg.whisper.api_key } : {}), model: cfg.whisper.model, ...(cfg.whisper.language ? { language: cfg.whisper.language } : {}), timeoutMs: cfg.whisper.timeout_s * 1000 })
    : new PocketsphinxEngine({ dir: o.dir }));
  /** Grammars by capability set (the operators' and one per level below), for the current manifest. */
  const built = new Map<string, { hash: string; grammar: CommandGrammar }>();
  const pending = new Map<string, Pending>();
  const log = o.logger.child({ component: 'voice' });

  /** The grammar of what `level` may do here (undefined: the operators', every enabled capability). */
  const grammar = (level?: Level | null): CommandGrammar | undefined => {
    const m = o.manifest();
    if (!m) return undefined;
    const names = level === undefined || isStaff(level) ? o.allowed() : o.allowed().filter((n) => grants(m.capabilities[n], level));
    const caps = names.join(',');
    const cached = built.get(caps);
    if (cached?.hash === m.hash) return cached.grammar;
    const g = buildCommandGrammar(m, { allowed: names });
    releaseCmuDict();
    if (engine instanceof PocketsphinxEngine) engine.setGrammar(g);
    for (const [k, v] of built) if (v.hash !== m.hash) built.delete(k); // an old manifest's grammars
    built.set(caps, { hash: m.hash, grammar: g });
    log.info({ words: g.words.length, added: Object.keys(g.added).length, capabilities: names.length }, 'voice grammar built');
    return g;
  };

  const say = (roomId: string, text: string): Promise<string> => o.sendText(roomId, text);

  const run = async (bot: DeviceBot, msg: ChatMessage): Promise<void> => {
    await bot.onMessage(msg);
  };

  const interceptor = (a: { roomId: string; sender: string; text?: string; reaction?: { key: string; relatesTo: string } }): boolean => {
    const p = pending.get(a.roomId);
    if (!p) return false;
    let yes: boolean | undefined;
    if (a.reaction) {
      if (a.reaction.relatesTo !== p.questionId) return false;
      yes = YES_KEYS.has(a.reaction.key) ? true : NO_KEYS.has(a.reaction.key) ? false : undefined;
    } else if (a.text !== undefined) {
      const t = a.text.trim().replace(/[.!]+$/, '');
      yes = YES.test(t) ? true : NO.test(t) ? false : undefined;
    }
    if (yes === undefined) return false;
    // The person who asked answers (operators may answer each other's): nobody runs another's words as themselves.
    if (a.sender !== p.sender && !(botRef?.isOperator(a.sender) && botRef.isOperator(p.sender))) return false;
    pending.delete(a.roomId);
    clearTimeout(p.timer);
    const bot = botRef;
    if (!bot) return true;
    if (yes) {
      const msg: ChatMessage = { ...p.msg, sender: a.sender, context: { ...p.msg.context, confirmed_by: a.sender } };
      void run(bot, msg).catch((err) => log.warn({ err: toMpError(err).message }, 'confirmed voice command failed'));
    } else {
      void say(a.roomId, '🎙 Dropped.').catch(() => undefined);
    }
    return true;
  };
  let botRef: DeviceBot | undefined;

  const handle = async (m: MatrixMessage, bot: DeviceBot): Promise<void> => {
    if (botRef !== bot) {
      botRef = bot;
      bot.setAnswerInterceptor(interceptor);
    }
    if (!bot.mayTalk(m.sender)) {
      // Strangers' audio is never downloaded; the bot audits them like any message.
      await bot.onMessage({ roomId: m.roomId, eventId: m.eventId, sender: m.sender, body: '', msgtype: m.msgtype });
      return;
    }
    const fail = (text: string): Promise<string> => say(m.roomId, `🎙 ${text}`);
    const maxMb = (cfg.max_bytes / (1024 * 1024)).toFixed(cfg.max_bytes % (1024 * 1024) === 0 ? 0 : 1);
    if (!m.mxc) {
      await fail('That voice message has no audio attached (encrypted media is not supported); send it again or type the command.');
      return;
    }
    if (m.info?.size !== undefined && m.info.size > cfg.max_bytes) {
      await fail(`That audio is ${(m.info.size / (1024 * 1024)).toFixed(1)} MB; I only take voice messages up to ${maxMb} MB. Send a shorter one or type the command.`);
      return;
    }
    if (m.info?.duration !== undefined && m.info.duration / 1000 > cfg.max_duration_s) {
      await fail(`That audio is ${Math.round(m.info.duration / 1000)} s long; I only take voice messages up to ${cfg.max_duration_s} s. Send a shorter one or type the command.`);
      return;
    }
    const work = mkdtempSync(path.join(o.dir, 'msg-'));
    const started = performance.now();
    try {
      let media;
      try {
        media = await o.download(m.mxc, { maxBytes: cfg.max_bytes });
      } catch (err) {
        const e = toMpError(err);
        await fail(e.code === 'output_limit' ? `That audio is over ${maxMb} MB; I only take voice messages up to ${maxMb} MB.` : `I could not download that voice message: ${e.message}`);
        return;
      }
      const format = detectAudioFormat(media.bytes);
      if (!format) {
        const declared = m.info?.mimetype ?? media.contentType;
        await fail(`That file says it is ${declared} but its content is ${describeBytes(media.bytes)}, not audio I can decode (Ogg/Opus, WAV, MP3, AAC, FLAC, WebM, MP4/M4A, AMR).`);
        return;
      }
      const input = path.join(work, `in.${format.name}`);
      const wav = path.join(work, 'voice.wav');
      writeFileSync(input, media.bytes);
      let durationS: number;
      try {
        ({ durationS } = await decodeToWav(input, format, wav, { maxDurationS: cfg.max_duration_s }));
      } catch (err) {
        await fail(`${capitalize(toMpError(err).message)}. Is it a valid ${format.name} file? Try again or type the command.`);
        return;
      }
      if (durationS > cfg.max_duration_s) {
        await fail(`That audio is longer than ${cfg.max_duration_s} s; I only take voice messages up to ${cfg.max_duration_s} s. Send a shorter one or type the command.`);
        return;
      }
      // The speaker's own commands: below operator, only what their level is granted.
      const g = grammar(bot.levelOf(m.sender));
      let t: Transcript;
      try {
        t = await engine.transcribe(wav, g);
      } catch (err) {
        await fail(`Transcription failed (${engine.name}): ${toMpError(err).message}. Try again or type the command.`);
        return;
      }
      const transcript = normalizeTranscript(t.text) ? t.text.trim() : '';
      log.info({ engine: engine.name, ms: Math.round(performance.now() - started), durationS: Math.round(durationS * 10) / 10, confidence: t.confidence }, 'voice message transcribed');
      if (!transcript) {
        const hint = engine.name === 'pocketsphinx' && g?.examples.length ? ` Try e.g. "${g.examples.slice(0, 3).join('", "')}".` : '';
        await fail(`I could not make out any words in that voice message.${hint} Or type the command.`);
        return;
      }
      const command = g?.toCommand(transcript);
      const body = o.llm ? transcript : (command ?? transcript);
      const context: VoiceContext = { transcript, engine: engine.name, confidence: t.confidence ?? null, ...(command && body === command ? { command } : {}) };
      const msg: ChatMessage = { roomId: m.roomId, eventId: m.eventId, sender: m.sender, body, msgtype: 'm.text', context };
      const shown = body !== transcript ? ` → ${body}` : '';
      if (t.confidence !== undefined && t.confidence < cfg.min_confidence) {
        const prev = pending.get(m.roomId);
        if (prev) clearTimeout(prev.timer);
        const qid = await say(m.roomId, `🎙 Did you mean "${transcript}"${shown}? (confidence ${Math.round(t.confidence * 100)}%) Answer yes or no, or react ✅/❌.`);
        const timer = setTimeout(() => {
          if (pending.get(m.roomId)?.questionId !== qid) return;
          pending.delete(m.roomId);
          void say(m.roomId, `🎙 No answer; dropped "${transcript}".`).catch(() => undefined);
        }, o.confirmTimeoutMs ?? 300_000);
        timer.unref();
        pending.set(m.roomId, { questionId: qid, sender: m.sender, msg, timer });
        return;
      }
      await say(m.roomId, `🎙 "${transcript}"${shown}`);
      await run(bot, msg);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  };

  return {
    handle: async (m, bot) => {
      try {
        await handle(m, bot);
      } catch (err) {
        log.error({ err: toMpError(err).message }, 'voice message handling failed');
        await say(m.roomId, `🎙 Something went wrong with that voice message: ${toMpError(err).message}`).catch(() => undefined);
      }
    },
    grammar,
    close() {
      for (const p of pending.values()) clearTimeout(p.timer);
      pending.clear();
    },
  };
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
