/**
 * Matrix lives in one folder (issue 15): outside bots/matrix/, no source file imports matrix-bot-sdk,
 * reaches into the folder past its entries, or writes a homeserver URL path of its own (raw homeserver
 * HTTP is bots/matrix/http.ts's job). homeserver.ts, the entry for callers without a session, must
 * not load the SDK.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.join(import.meta.dirname, '..');
const SOURCE_DIRS = ['bots', 'launcher', 'capabilities', 'scripts', 'bin'];
const MATRIX_DIR = path.join(ROOT, 'bots', 'matrix');

function sourceFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // a folder this checkout does not have
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'node_modules') walk(p);
      } else if (/\.(ts|mts|cts|js|mjs|cjs)$/.test(e.name) && !e.name.endsWith('.d.ts')) out.push(p);
    }
  };
  for (const d of SOURCE_DIRS) walk(path.join(ROOT, d));
  return out.filter((f) => !f.startsWith(MATRIX_DIR + path.sep));
}

/**
 * The crypto module stand-in (its own package, @matrix-org/matrix-sdk-crypto-nodejs): it names the
 * endpoints of the requests it hands to matrix-bot-sdk, and sends none itself.
 */
const CRYPTO_MODULE = path.join(ROOT, 'bots', 'crypto-optional');

/** Module specifiers a file imports (static, dynamic, type-only, re-exports, require). */
function specifiers(text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const out: string[] = [];
  for (const m of code.matchAll(/\b(?:import|export)\s[^'"]*?\sfrom\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of code.matchAll(/\bimport\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of code.matchAll(/\b(?:import|require)\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out;
}

const rel = (f: string): string => path.relative(ROOT, f);

/** The folder's public entries: index.ts (everything) and homeserver.ts (what does not load the SDK). */
const ENTRIES = new Set(['index.js', 'homeserver.js']);

describe('Matrix in one folder', () => {
  const files = sourceFiles();

  it('finds the sources it checks', () => {
    expect(files.length).toBeGreaterThan(20);
    expect(files.some((f) => rel(f) === path.join('bots', 'device-main.ts'))).toBe(true);
  });

  it('nothing outside bots/matrix/ imports matrix-bot-sdk', () => {
    const offenders = files.filter((f) => specifiers(readFileSync(f, 'utf8')).some((s) => s === 'matrix-bot-sdk' || s.startsWith('matrix-bot-sdk/'))).map(rel);
    expect(offenders).toEqual([]);
  });

  it('callers import bots/matrix/ through its entries only (index, and homeserver without the SDK)', () => {
    const offenders: string[] = [];
    for (const f of files) {
      for (const s of specifiers(readFileSync(f, 'utf8'))) {
        if (!s.startsWith('.')) continue;
        const target = path.resolve(path.dirname(f), s);
        if (target.startsWith(MATRIX_DIR + path.sep) && !ENTRIES.has(path.basename(target))) offenders.push(`${rel(f)} -> ${s}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('no raw homeserver HTTP outside bots/matrix/ (no /_matrix/ or /_synapse/ paths in code)', () => {
    const offenders: string[] = [];
    for (const f of files.filter((x) => !x.startsWith(CRYPTO_MODULE + path.sep))) {
      readFileSync(f, 'utf8').split('\n').forEach((line, i) => {
        const code = line.replace(/\/\/.*$/, '').replace(/^\s*\*.*$/, '');
        if (/\/_(matrix|synapse)\//.test(code)) offenders.push(`${rel(f)}:${i + 1}`);
      });
    }
    expect(offenders).toEqual([]);
  });

  it('bots/matrix/homeserver.ts does not load matrix-bot-sdk (not even through its own imports)', () => {
    const seen = new Set<string>();
    const sdk: string[] = [];
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = readFileSync(file, 'utf8');
      // type-only imports vanish at run time
      const runtime = text.replace(/^\s*import\s+type\s[^;]+;/gm, '').replace(/^\s*export\s+type\s[^;]+;/gm, '');
      for (const s of specifiers(runtime)) {
        if (s === 'matrix-bot-sdk' || s.startsWith('matrix-bot-sdk/')) sdk.push(rel(file));
        if (s.startsWith('.') && s.endsWith('.js')) {
          const ts = path.resolve(path.dirname(file), s).replace(/\.js$/, '.ts');
          if (ts.startsWith(path.join(ROOT, 'bots') + path.sep)) visit(ts);
        }
      }
    };
    visit(path.join(MATRIX_DIR, 'homeserver.ts'));
    expect(seen.size).toBeGreaterThan(3);
    expect(sdk).toEqual([]);
  });
});
