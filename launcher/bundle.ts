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

/**
 * Packages a bot never calls but which load with their parents: pino's worker-thread transports, and
 * matrix-bot-sdk's appservice server (express, morgan), Postgres storage, and HTML helpers (we send
 * our own plain + HTML bodies). Each becomes a stub that throws if anything ever uses it, which keeps
 * several MB of code out of every bot process.
 */
const STUBBED = ['thread-stream', 'express', 'morgan', 'postgres', 'sanitize-html', 'html-to-text'];
const stubUnused = {
  name: 'stub-unused',
  setup(b: { onResolve: (o: { filter: RegExp }, f: (a: { path: string }) => { path: string; namespace: string }) => void; onLoad: (o: { filter: RegExp; namespace: string }, f: (a: { path: string }) => { contents: string; loader: 'js' }) => void }): void {
    b.onResolve({ filter: new RegExp(`^(${STUBBED.join('|')})$`) }, (a) => ({ path: a.path, namespace: 'mp-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'mp-stub' }, (a) => ({
      contents: `const fail = () => { throw new Error(${JSON.stringify(`${a.path} is not included in the meshpilot device bot bundle`)}); };
const stub = new Proxy(function () {}, { get: (_t, p) => (p === '__esModule' ? false : p === 'default' ? stub : fail), apply: fail, construct: fail });
module.exports = stub;`,
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
    plugins: [stubUnused],
    minify: true,
    keepNames: true,
    logLevel: 'silent',
    banner: { js: "import { createRequire as __mpCreateRequire } from 'node:module'; const require = __mpCreateRequire(import.meta.url);" },
  });
  return { file: outfile, ms: Date.now() - started, bytes: statSync(outfile).size };
}
