/**
 * Bundles the device bot into one ESM file (dist/device-bot.mjs) before the launcher forks its
 * bots: loading one pre-built file is faster and lighter than transpiling the sources in each
 * bot process. Native and dynamically-loading packages stay external (resolved from node_modules).
 */
import { mkdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../capabilities/home.js';

export const BOT_SOURCE = path.join(PACKAGE_ROOT, 'bots', 'device-main.ts');
export const BOT_BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'device-bot.mjs');

// Native modules stay outside; everything else (matrix-bot-sdk's whole dependency tree included) is
// bundled, which is what saves each bot process from resolving and lexing hundreds of CommonJS files.
// The crypto shim stays outside so it can still find a real crypto module at run time.
const EXTERNAL = ['better-sqlite3', 'ssh2', 'cpu-features', '@matrix-org/matrix-sdk-crypto-nodejs'];

/** pino's worker-thread transports (thread-stream) are never used by bots: a stub keeps them out. */
const stubThreadStream = {
  name: 'stub-thread-stream',
  setup(b: { onResolve: (o: { filter: RegExp }, f: () => { path: string; namespace: string }) => void; onLoad: (o: { filter: RegExp; namespace: string }, f: () => { contents: string; loader: 'js' }) => void }): void {
    b.onResolve({ filter: /^thread-stream$/ }, () => ({ path: 'thread-stream', namespace: 'mp-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'mp-stub' }, () => ({
      contents: "module.exports = class ThreadStream { constructor() { throw new Error('pino transports are not available in the device bot bundle'); } };",
      loader: 'js',
    }));
  },
};

/** Builds the bundle; returns its path and how long it took. Throws with esbuild's message on failure. */
export async function buildBotBundle(outfile: string = BOT_BUNDLE): Promise<{ file: string; ms: number; bytes: number }> {
  const started = Date.now();
  const { build } = await import('esbuild');
  mkdirSync(path.dirname(outfile), { recursive: true });
  await build({
    entryPoints: [BOT_SOURCE],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: EXTERNAL,
    plugins: [stubThreadStream],
    minify: true,
    keepNames: true,
    logLevel: 'silent',
    banner: { js: "import { createRequire as __mpCreateRequire } from 'node:module'; const require = __mpCreateRequire(import.meta.url);" },
  });
  return { file: outfile, ms: Date.now() - started, bytes: statSync(outfile).size };
}
