/**
 * Voice figures, pocketsphinx engine, real processes throughout:
 *   voice.reply_p50 — an Element-style voice message ("check disk usage", Ogg/Opus) sent from the
 *     operator's phone → the bot's reply with the result, through the real device bot process and the
 *     homeserver fixture (download, ffmpeg, two pocketsphinx passes, sys.info, reply);
 *   voice.exact — exact-match rate of transcripts for generated command phrases (espeak-ng → Ogg/Opus →
 *     ffmpeg → pocketsphinx with the grammar generated from a manifest).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse } from 'yaml';
import { parseManifest } from '../capabilities/manifest.js';
import { writeConfig } from '../capabilities/config.js';
import { buildCommandGrammar } from '../bots/voice-grammar.js';
import { decodeToWav, detectAudioFormat, PocketsphinxEngine } from '../bots/voice.js';
import { speakOgg } from '../test/fixtures/whisper-http.js';
import { createBotEnv, waitReady } from '../test/helpers/bot-env.js';
import { bodyOf } from '../test/helpers/phone.js';
import type { BenchFigure } from './run.js';

export const figures = ['voice.reply_p50', 'voice.exact'];

const MANIFEST = `device: box
capabilities:
  sys.info: {}
  sys.health: {}
  proc.list: {}
  svc.status: { services: [nginx, postgresql, web-api, redis] }
  svc.logs: { services: [nginx, postgresql, web-api, redis] }
  svc.restart: { services: [nginx, postgresql, web-api, redis] }
  docker.ps: {}
  docker.logs: { containers: [grafana, homeassistant] }
  docker.restart: { containers: [grafana, homeassistant] }
  fs.list: { paths_allowed: ["/var/log/**", "/srv/backups/**"] }
`;

export const PHRASES = [
  'check disk usage', 'show memory', 'show uptime', 'list processes', 'restart nginx', 'show logs of nginx',
  'status of postgresql', 'restart grafana', 'list var log', 'check the status', 'is web api running',
  'show me the audit log', 'list containers', 'help', 'check disk usage on the server', 'how much memory is free',
  'restart web api', 'show health', 'list processes by memory', 'show logs of grafana', 'is redis running',
  'restart redis', 'how much disk space is left', 'list all containers',
];

async function accuracy(dir: string): Promise<{ exact: number; wrong: string[] }> {
  const r = parseManifest(MANIFEST, 'box.yaml');
  if (!r.ok) throw new Error('bench manifest invalid');
  const engine = new PocketsphinxEngine({ dir: path.join(dir, 'ps') });
  engine.setGrammar(buildCommandGrammar(r.manifest));
  let ok = 0;
  const wrong: string[] = [];
  for (const [i, p] of PHRASES.entries()) {
    const ogg = await speakOgg(p, dir, `a${i}`);
    const wav = path.join(dir, `a${i}-16k.wav`);
    await decodeToWav(ogg.path, detectAudioFormat(ogg.bytes)!, wav, { maxDurationS: 120 });
    const t = await engine.transcribe(wav);
    if (t.text === p) ok++;
    else wrong.push(`${p} → ${t.text || '(nothing)'}`);
  }
  return { exact: (ok / PHRASES.length) * 100, wrong };
}

async function replyLatency(n: number): Promise<number[]> {
  const env = await createBotEnv({ withLlm: false });
  try {
    const botUserId = (await env.registerBot('box')).userId;
    env.writeManifest('box', '  sys.info: {}\n  sys.health: {}\n');
    const file = path.join(env.home, 'config.yaml');
    writeConfig(file, { ...(parse(readFileSync(file, 'utf8')) as Record<string, unknown>), voice: { engine: 'pocketsphinx' } });
    const bot = env.startBot('box');
    await waitReady(bot);
    const isBot = (e: { sender: string; type: string }): boolean => e.sender === botUserId && e.type === 'm.room.message';
    const live = await env.phone.waitFor((e) => isBot(e) && /✓ box live/.test(bodyOf(e)));
    const room = live.room_id;
    await env.phone.waitFor((e) => e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join' && e.room_id === room);
    // ~3 s of speech, like a short spoken command.
    const v = await speakOgg('check disk usage on the server', env.work, 'bench');
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const idx = env.phone.events.length;
      const t0 = performance.now();
      const up = await fetch(`${env.hs.url}/_matrix/media/v3/upload`, { method: 'POST', headers: { Authorization: `Bearer ${env.operator.accessToken}`, 'Content-Type': 'audio/ogg' }, body: v.bytes });
      const { content_uri: mxc } = (await up.json()) as { content_uri: string };
      await env.phone.client.sendMessage(room, { msgtype: 'm.audio', body: 'Voice message', url: mxc, info: { mimetype: 'audio/ogg', size: v.bytes.length, duration: v.durationMs }, 'org.matrix.msc3245.voice': {} } as never);
      await env.phone.waitFor((e) => isBot(e) && env.phone.events.indexOf(e) >= idx && /🧾 #\d+ sys\.info ok/.test(bodyOf(e)), 20_000);
      times.push((performance.now() - t0) / 1000);
    }
    return times;
  } finally {
    await env.cleanup();
  }
}

export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-voice-'));
  try {
    const times = (await replyLatency(9)).slice(1).sort((a, b) => a - b); // the first one builds the grammar
    const p50 = times[Math.floor(times.length / 2)] ?? 0;
    const acc = await accuracy(dir);
    for (const w of acc.wrong) process.stderr.write(`voice miss: ${w}\n`);
    return [
      { name: 'voice.reply_p50', value: p50, unit: 's', target: '<= 1.5' },
      { name: 'voice.exact', value: acc.exact, unit: '%', target: '>= 90' },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
