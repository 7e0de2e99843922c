/** launcher/bundle.ts: the device bot bundle every bot process loads. */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import path from 'node:path';
import { buildBotBundle } from '../launcher/bundle.js';
import { textReply, toolReply } from './fixtures/anthropic.js';
import { createBotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { tempDir } from './helpers/tmp.js';

const MODULE_LIST_PRELOAD = path.join(import.meta.dirname, 'fixtures', 'module-list.cjs');

/** Node built-ins the bot process has loaded so far (test/fixtures/module-list.cjs answers SIGUSR2). */
async function loadedBuiltins(pid: number): Promise<string[]> {
  const file = path.join(os.tmpdir(), `mp-modules-${pid}.txt`);
  rmSync(file, { force: true });
  process.kill(pid, 'SIGUSR2');
  for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 50));
  const list = readFileSync(file, 'utf8').split('\n');
  rmSync(file, { force: true });
  return list;
}

/** The entry and every chunk it imports statically (what a bot parses at start), by file name. */
function startupFiles(entry: string): Map<string, string> {
  const out = new Map<string, string>();
  const visit = (file: string): void => {
    if (out.has(file)) return;
    const text = readFileSync(file, 'latin1');
    out.set(file, text);
    for (const m of text.matchAll(/(?:^|[;\n])\s*import\s*(?:[\w${},\s*]+from\s*)?"(\.\/[^"]+\.mjs)"/g)) visit(path.join(path.dirname(file), m[1]!));
  };
  visit(entry);
  return out;
}

describe('device bot bundle', () => {
  it('keeps lazily used code out of start-up, and start-up code ASCII-only', async () => {
    const { file } = await buildBotBundle(path.join(tempDir(), 'device-bot.mjs'));
    const files = startupFiles(file);
    expect(files.size).toBeGreaterThan(1);
    const all = [...files.values()].join('\n');
    // the LLM SDK, ssh2 and undici load on first use only (dynamic import)
    expect(all).not.toContain('api.anthropic.com');
    expect(all).toMatch(/import\("\.\/device-bot-llm-[A-Z0-9]+\.mjs"\)/);
    // V8 keeps each module's source for the process's life; a single non-ASCII character makes it
    // two-byte text, twice the memory. Write such characters as escapes in the sources.
    for (const [f, text] of files) expect({ file: path.basename(f), nonAscii: /[^\x00-\x7f]/.exec(text)?.[0] ?? null }).toEqual({ file: path.basename(f), nonAscii: null });
  }, 60_000);

  it('runs a conversation (LLM tool call, command, encryption) without loading Node\'s fetch and its undici', async () => {
    // Node's fetch, Headers or FormData would load its bundled undici with http2, tls and zlib: 8 MB per
    // bot. The bot's own calls use bots/http.ts; the bundle gives the Anthropic SDK its Headers.
    const { file } = await buildBotBundle();
    const env = await createBotEnv({ entry: file, encryption: 'auto', phoneCrypto: true, nodeArgs: ['--require', MODULE_LIST_PRELOAD] });
    try {
      await env.registerBot('lean');
      writeFileSync(path.join(env.work, 'notes.txt'), 'hello');
      env.writeManifest('lean', `  sys.info: {}\n  sys.health: {}\n  fs.list: { paths_allowed: ["${env.work}/**"] }\n`);
      const { child, room, botUserId } = await env.startBotInDm('lean');
      const fromBot = (re: RegExp, from: number): Promise<unknown> =>
        env.phone.waitFor((e) => e.sender === botUserId && env.phone.events.indexOf(e) >= from && e.type === 'm.room.message' && re.test(bodyOf(e)), 20_000);
      env.llm.enqueue(toolReply([{ name: 'fs_list', input: { path: env.work } }]), textReply('One file: notes.txt'));
      let from = env.phone.events.length;
      await env.phone.client.sendTextMessage(room, 'what is in the work dir?');
      await fromBot(/One file: notes\.txt/, from);
      const request = env.llm.requests.at(-1);
      expect(JSON.stringify(request?.body)).toContain('notes.txt'); // the real listing went to the model
      from = env.phone.events.length;
      await env.phone.client.sendTextMessage(room, '!status');
      await fromBot(/lean/, from);
      const builtins = await loadedBuiltins(child.pid!);
      expect(builtins).toContain('NativeModule http');
      expect(builtins.filter((m) => /undici|http2|zlib/.test(m))).toEqual([]);
    } finally {
      await env.cleanup();
    }
  }, 120_000);

  it('bot code makes no locale-aware calls (each maps MBs of ICU data into every bot process)', () => {
    // Measured: the first localeCompare maps ~2 MB of ICU collation data, toLocaleString / Intl ~4.6 MB.
    const roots = ['bots', 'capabilities'].map((d) => path.join(import.meta.dirname, '..', d));
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(ts|cjs|mjs)$/.test(e.name)) {
          readFileSync(p, 'utf8').split('\n').forEach((line, i) => {
            const code = line.replace(/\/\/.*$/, '');
            if (/\blocaleCompare\b|\btoLocale\w*\(|\bIntl\./.test(code)) offenders.push(`${path.relative(path.dirname(roots[0]!), p)}:${i + 1}`);
          });
        }
      }
    };
    roots.forEach(walk);
    expect(offenders).toEqual([]);
  });
});
