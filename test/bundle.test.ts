/** launcher/bundle.ts: the device bot bundle every bot process loads. */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { buildBotBundle } from '../launcher/bundle.js';
import { tempDir } from './helpers/tmp.js';

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
});
