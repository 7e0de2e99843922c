/**
 * Voice pieces with real processes: espeak-ng speech → Ogg/Opus (like Element) → ffmpeg → pocketsphinx
 * with the grammar generated from a manifest; magic-number detection; grammar and dictionary
 * generation; the whisper-http engine against a real multipart-parsing server.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { agreement, buildCommandGrammar, Lexicon, loadCmuDict, normalizeTranscript, spokenTokens } from '../bots/voice-grammar.js';
import { decodeToWav, describeBytes, detectAudioFormat, PocketsphinxEngine, wavDurationS, WhisperHttpEngine, whisperEndpoint } from '../bots/voice.js';
import { speakOgg, startWhisperFixture, type WhisperFixture } from './fixtures/whisper-http.js';

const MANIFEST = `device: box
os: linux
transport: { kind: local }
capabilities:
  sys.info: {}
  sys.health: {}
  proc.list: {}
  svc.status: { services: [nginx, postgresql, web-api, "cron*"] }
  svc.logs: { services: [nginx, postgresql, web-api] }
  svc.restart: { services: [nginx, postgresql, web-api] }
  docker.ps: {}
  docker.logs: { containers: [grafana, zxqv-worker] }
  docker.restart: { containers: [grafana, zxqv-worker] }
  fs.list: { paths_allowed: ["/var/log/**"] }
`;

function manifest(text = MANIFEST): Manifest {
  const r = parseManifest(text, 'box.yaml');
  if (!r.ok) throw new Error(JSON.stringify(r));
  return r.manifest;
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'mp-voice-test-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('audio format detection (magic numbers, not names)', () => {
  it('recognises the containers Element and phones send', async () => {
    const ogg = await speakOgg('check disk usage', dir, 'fmt');
    expect(detectAudioFormat(ogg.bytes)?.name).toBe('ogg');
    const wav = readFileSync(path.join(dir, 'fmt.wav'));
    expect(detectAudioFormat(wav)?.name).toBe('wav');
    const enc = (args: string[], out: string): Buffer => {
      execFileSync('ffmpeg', ['-nostdin', '-loglevel', 'error', '-y', '-i', path.join(dir, 'fmt.wav'), ...args, path.join(dir, out)]);
      return readFileSync(path.join(dir, out));
    };
    expect(detectAudioFormat(enc(['-c:a', 'flac'], 'x.flac'))?.name).toBe('flac');
    expect(detectAudioFormat(enc(['-c:a', 'libopus'], 'x.webm'))?.name).toBe('webm');
    expect(detectAudioFormat(enc(['-c:a', 'aac'], 'x.m4a'))?.name).toBe('mp4');
    expect(detectAudioFormat(enc(['-c:a', 'aac', '-f', 'adts'], 'x.aac'))?.name).toBe('aac');
    const id3 = Buffer.concat([Buffer.from('ID3\x04\x00\x00\x00\x00\x00\x00', 'latin1'), Buffer.alloc(8)]);
    expect(detectAudioFormat(id3)?.name).toBe('mp3');
    expect(detectAudioFormat(Buffer.from([0xff, 0xfb, 0x90, 0x64, 0, 0, 0, 0, 0, 0, 0, 0]))?.name).toBe('mp3');
  });

  it('refuses what is not audio and says what it looks like', () => {
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]);
    expect(detectAudioFormat(png)).toBeUndefined();
    expect(describeBytes(png)).toBe('a PNG image');
    const text = Buffer.from('hello, this is not a voice message at all\n');
    expect(detectAudioFormat(text)).toBeUndefined();
    expect(describeBytes(text)).toBe('text');
    expect(describeBytes(Buffer.alloc(0))).toBe('an empty file');
  });
});

describe('ffmpeg decoding', () => {
  it('decodes Ogg/Opus to 16 kHz mono 16-bit WAV and measures it', async () => {
    const ogg = await speakOgg('restart nginx', dir, 'dec');
    const out = path.join(dir, 'dec-out.wav');
    const { durationS } = await decodeToWav(ogg.path, detectAudioFormat(ogg.bytes)!, out, { maxDurationS: 120 });
    const wav = readFileSync(out);
    expect(wav.readUInt16LE(22)).toBe(1); // channels
    expect(wav.readUInt32LE(24)).toBe(16000);
    expect(wav.readUInt16LE(34)).toBe(16);
    expect(durationS).toBeGreaterThan(0.5);
    expect(Math.abs(durationS - ogg.durationMs / 1000)).toBeLessThan(0.3);
    expect(wavDurationS(wav)).toBeCloseTo(durationS, 3);
  });

  it('a corrupt file with an audio magic number fails with a clear message', async () => {
    const bad = path.join(dir, 'bad.ogg');
    writeFileSync(bad, Buffer.concat([Buffer.from('OggS'), Buffer.alloc(4000, 7)]));
    await expect(decodeToWav(bad, { name: 'ogg', demuxer: 'ogg' }, path.join(dir, 'bad.wav'), { maxDurationS: 120 })).rejects.toThrow(/could not decode the ogg audio/);
  });
});

describe('grammar and dictionary from the manifest', () => {
  it('includes manifest names and gives every word a pronunciation', () => {
    const g = buildCommandGrammar(manifest());
    expect(g.jsgf).toMatch(/^#JSGF V1\.0;/);
    expect(g.jsgf).toMatch(/<unit> = [^;]*\bnginx\b/);
    expect(g.jsgf).toMatch(/<unit> = [^;]*\bweb api\b/);
    expect(g.jsgf).toMatch(/<unit> = [^;]*\bzxqv worker\b/);
    expect(g.jsgf).not.toMatch(/cron/); // globs are not names
    expect(g.jsgf).toMatch(/<path> = [^;]*\bvar log\b/);
    expect(g.names.service['web api']).toBe('web-api');
    const cmu = loadCmuDict();
    expect(cmu.has('nginx')).toBe(false);
    expect(cmu.has('uptime')).toBe(false);
    const dictWords = new Set(g.dict.trim().split('\n').map((l) => l.split(' ')[0]!.replace(/\(\d+\)$/, '')));
    for (const w of g.words) expect(dictWords.has(w), w).toBe(true);
    expect(g.added['nginx']).toBe('extra');
    expect(g.added['uptime']).toBe('extra');
    expect(g.added['zxqv']).toBe('spelled');
    expect(g.dict).toMatch(/^zxqv Z IY EH K S K Y UW V IY$/m);
    // Limited to the grammar's words (plus the loop's), not the 135k-word dictionary.
    expect(g.dict.split('\n').length).toBeLessThan(1000);
  });

  it('pronunciation fallbacks: maintained words, compounds of known words, spelling', () => {
    const lex = new Lexicon();
    expect(lex.pronounce('nginx')).toEqual({ phones: ['EH N JH IH N EH K S'], source: 'extra' });
    expect(lex.pronounce('disk').source).toBe('cmu');
    const c = lex.pronounce('backupserver');
    expect(c.source).toBe('compound');
    expect(c.phones[0]).toBe(`${loadCmuDict().get('backup')![0]} ${loadCmuDict().get('server')![0]}`);
    expect(lex.pronounce('xq7')).toEqual({ phones: ['EH K S K Y UW S EH V AH N'], source: 'spelled' });
    expect(spokenTokens('Web-API_2.service')).toEqual(['web', 'api', '2']);
    expect(spokenTokens('postgresql14')).toEqual(['postgresql', '1', '4']);
  });

  it('maps phrases to explicit commands, only for enabled capabilities', () => {
    const g = buildCommandGrammar(manifest());
    expect(g.toCommand('check disk usage')).toBe('!cap sys.info');
    expect(g.toCommand('Check disk usage on the server.')).toBe('!cap sys.info');
    expect(g.toCommand('status of nginx')).toBe('!cap svc.status service=nginx');
    expect(g.toCommand('restart web api')).toBe('!cap svc.restart service=web-api');
    expect(g.toCommand('show logs of grafana')).toBe('!cap docker.logs container=grafana');
    expect(g.toCommand('restart grafana')).toBe('!cap docker.restart container=grafana');
    expect(g.toCommand('list var log')).toBe('!cap fs.list path=/var/log');
    expect(g.toCommand('list processes by memory')).toBe('!cap proc.list sort=mem');
    expect(g.toCommand('check the status')).toBe('!status');
    expect(g.toCommand('make me a sandwich')).toBeUndefined();
    const small = buildCommandGrammar(manifest('device: tiny\ncapabilities:\n  sys.info: {}\n'));
    expect(small.toCommand('restart nginx')).toBeUndefined();
    expect(small.toCommand('list processes')).toBeUndefined();
    expect(small.jsgf).not.toMatch(/restart/);
    expect(small.toCommand('show uptime')).toBe('!cap sys.info');
  });

  it('normalises transcripts and scores agreement', () => {
    expect(normalizeTranscript('  Restart NGINX, please! ')).toBe('restart nginx please');
    expect(agreement('restart nginx', 'restart nginx')).toBe(1);
    expect(agreement('show memory', 'show me the memory')).toBeCloseTo(2 / 3, 5);
    expect(agreement('x', '')).toBe(0);
  });
});

describe('pocketsphinx with the generated grammar (espeak-ng → Ogg/Opus → WAV)', () => {
  const phrases = ['check disk usage', 'restart nginx', 'show logs of nginx', 'status of postgresql', 'list processes', 'show uptime', 'restart web api', 'list var log'];
  it('recognises spoken commands exactly, with confidence', async () => {
    const engine = new PocketsphinxEngine({ dir: path.join(dir, 'ps') });
    engine.setGrammar(buildCommandGrammar(manifest()));
    const got: string[] = [];
    for (const [i, p] of phrases.entries()) {
      const ogg = await speakOgg(p, dir, `ps${i}`);
      const wav = path.join(dir, `ps${i}-16k.wav`);
      await decodeToWav(ogg.path, detectAudioFormat(ogg.bytes)!, wav, { maxDurationS: 120 });
      const t = await engine.transcribe(wav);
      got.push(t.text);
      expect(t.confidence === 0.5 || t.confidence === 1).toBe(true);
    }
    expect(got).toEqual(phrases);
  }, 60_000);

  it('speech outside the grammar gets low confidence or nothing', async () => {
    const engine = new PocketsphinxEngine({ dir: path.join(dir, 'ps2') });
    engine.setGrammar(buildCommandGrammar(manifest()));
    const ogg = await speakOgg('make me a sandwich please', dir, 'oog');
    const wav = path.join(dir, 'oog-16k.wav');
    await decodeToWav(ogg.path, detectAudioFormat(ogg.bytes)!, wav, { maxDurationS: 120 });
    const t = await engine.transcribe(wav);
    expect(t.text === '' || (t.confidence ?? 1) < 0.7).toBe(true);
  }, 30_000);
});

describe('whisper-http engine', () => {
  let fx: WhisperFixture;
  let wav: string;
  beforeAll(async () => {
    fx = await startWhisperFixture({ apiKey: 'sk-whisper' });
    const ogg = await speakOgg('check disk usage', dir, 'wh');
    wav = path.join(dir, 'wh-16k.wav');
    await decodeToWav(ogg.path, detectAudioFormat(ogg.bytes)!, wav, { maxDurationS: 120 });
  });
  afterAll(async () => {
    await fx.close();
  });

  it('uploads the WAV as multipart with model, language and response_format, Bearer key', async () => {
    fx.enqueue({ text: ' Check disk usage. ' });
    const e = new WhisperHttpEngine({ url: fx.url, apiKey: 'sk-whisper', model: 'whisper-large-v3', language: 'en', timeoutMs: 5000 });
    const t = await e.transcribe(wav);
    expect(t).toEqual({ text: 'Check disk usage.' });
    const r = fx.requests.at(-1)!;
    expect(r.problem).toBeUndefined();
    expect(r).toMatchObject({ authorization: 'Bearer sk-whisper', model: 'whisper-large-v3', language: 'en', responseFormat: 'json', fileName: 'voice.wav', fileType: 'audio/wav' });
    expect(r.wav).toMatchObject({ format: 1, channels: 1, sampleRate: 16000, bitsPerSample: 16 });
    expect(r.wav!.dataBytes).toBeGreaterThan(16000);
  });

  it('confidence from avg_logprob / no_speech_prob when present', async () => {
    fx.enqueue({ text: 'restart nginx', segments: [{ avg_logprob: -1.2, no_speech_prob: 0.1 }] });
    const e = new WhisperHttpEngine({ url: `${fx.url}/v1`, apiKey: 'sk-whisper', model: 'whisper-1', timeoutMs: 5000 });
    const t = await e.transcribe(wav);
    expect(t.confidence).toBeCloseTo(Math.exp(-1.2) * 0.9, 5);
    expect(fx.requests.at(-1)!.language).toBeNull();
  });

  it('clear errors: bad key, server error, timeout, unreachable', async () => {
    const bad = new WhisperHttpEngine({ url: fx.url, apiKey: 'wrong', model: 'm', timeoutMs: 5000 });
    await expect(bad.transcribe(wav)).rejects.toThrow(/refused the API key/);
    fx.enqueue({ status: 500, body: 'boom' });
    const e = new WhisperHttpEngine({ url: fx.url, apiKey: 'sk-whisper', model: 'm', timeoutMs: 500 });
    await expect(e.transcribe(wav)).rejects.toThrow(/failed \(HTTP 500\)/);
    fx.enqueue({ delayMs: 2000, text: 'late' });
    await expect(e.transcribe(wav)).rejects.toThrow(/did not answer within/);
    const gone = new WhisperHttpEngine({ url: 'http://127.0.0.1:9', model: 'm', timeoutMs: 2000 });
    await expect(gone.transcribe(wav)).rejects.toThrow(/unreachable/);
  });

  it('endpoint from a base URL', () => {
    expect(whisperEndpoint('http://h:1')).toBe('http://h:1/v1/audio/transcriptions');
    expect(whisperEndpoint('http://h:1/v1/')).toBe('http://h:1/v1/audio/transcriptions');
    expect(whisperEndpoint('http://h:1/v1/audio/transcriptions')).toBe('http://h:1/v1/audio/transcriptions');
  });
});
