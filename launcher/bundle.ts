/**
 * Bundles the device bot (dist/device-bot.mjs plus its chunks) before the launcher forks its bots:
 * loading pre-built files is faster and lighter than transpiling the sources in each bot process.
 * Native and dynamically-loading packages stay external (resolved from node_modules).
 *
 * Code splitting: modules the bot imports lazily (the LLM client and @anthropic-ai/sdk, the ssh and mesh
 * transports, undici for voice/mesh) become chunks that a bot parses only when it uses them. Chunks sit
 * beside the entry (dist/device-bot-<name>-<hash>.mjs), not in a subfolder, so paths that bundled modules
 * derive from import.meta.url (capabilities/home.ts PACKAGE_ROOT) stay right whichever chunk they land in.
 * Files are written atomically, chunks before the entry, so a bot starting during a rebuild never loads
 * a half-written file or an entry whose chunks are missing.
 */
import { readdirSync, renameSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../capabilities/home.js';

export const BOT_SOURCE = path.join(PACKAGE_ROOT, 'bots', 'device-main.ts');
export const BOT_BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'device-bot.mjs');
const BUNDLE_GLOBALS = path.join(PACKAGE_ROOT, 'bots', 'bundle-globals.ts');

// Native modules stay outside; everything else (matrix-bot-sdk's whole dependency tree included) is
// bundled, which is what saves each bot process from resolving and lexing hundreds of CommonJS files.
// The crypto shim stays outside so it can still find a real crypto module at run time.
const EXTERNAL = ['better-sqlite3', 'ssh2', 'cpu-features', '@matrix-org/matrix-sdk-crypto-nodejs'];

/**
 * Packages a bot never calls but which load with their parents: pino's worker-thread transports, and
 * matrix-bot-sdk's appservice server (express, morgan), Postgres storage, and HTML helpers (we send
 * our own plain + HTML bodies), and `request` (matrix-bot-sdk's HTTP goes through bots/matrix-http.ts;
 * request's tree — psl, mime-db, ajv, sshpk, tough-cookie, har-validator… — was 1.9 of the 3 MB), and
 * lowdb, which pulls in all of lodash (the SDK's file storage providers; bots/matrix.ts has its own).
 * Each becomes a stub that throws if anything ever uses it, which keeps several MB of code out of
 * every bot process.
 */
const STUBBED = ['thread-stream', 'express', 'morgan', 'postgres', 'sanitize-html', 'html-to-text', 'request', 'lowdb', 'lowdb/adapters/FileSync'];
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

/**
 * zod's `z` namespace carries `z.locales`, its error messages in 50 languages (~300 KB of code every bot
 * would parse and keep). meshpilot's messages are English: the bundle's `zod/v4/locales/index.js` holds
 * `en` only (still reachable as z.locales.en).
 */
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(b: { onResolve: (o: { filter: RegExp }, f: (a: { path: string; importer: string }) => { path: string; namespace: string } | undefined) => void; onLoad: (o: { filter: RegExp; namespace: string }, f: (a: { path: string }) => { contents: string; loader: 'js'; resolveDir: string }) => void }): void {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) =>
      /[\\/]node_modules[\\/]zod[\\/]v4[\\/]/.test(a.importer) ? { path: path.join(path.dirname(a.importer), '..', 'locales', 'index.js'), namespace: 'mp-zod-locales' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'mp-zod-locales' }, (a) => ({ contents: 'export { default as en } from "./en.js";', loader: 'js', resolveDir: path.dirname(a.path) }));
  },
};

/** Chunks of an older build that this one no longer uses are removed once they are this old (a bot still running from that build may yet import them). */
const STALE_CHUNK_MS = 24 * 3600_000;

/**
 * Builds the bundle; returns the entry's path, how long it took and the bytes written (entry and chunks).
 * `outfile` must end in .mjs; its chunks are written beside it as <name>-<chunk>-<hash>.mjs. Throws with
 * esbuild's message on failure.
 */
export async function buildBotBundle(outfile: string = BOT_BUNDLE): Promise<{ file: string; ms: number; bytes: number }> {
  const started = Date.now();
  if (!outfile.endsWith('.mjs')) throw new Error(`the bot bundle must be an .mjs file (got ${outfile})`);
  const { build } = await import('esbuild');
  const dir = path.dirname(outfile);
  const name = path.basename(outfile, '.mjs');
  mkdirSync(dir, { recursive: true });
  const result = await build({
    entryPoints: { [name]: BOT_SOURCE },
    outdir: dir,
    entryNames: '[name]',
    chunkNames: `${name}-[name]-[hash]`,
    outExtension: { '.js': '.mjs' },
    splitting: true,
    write: false,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: EXTERNAL,
    plugins: [stubUnused, zodEnglishOnly],
    // The SDK's `Headers` / `FormData` become bots/http.ts's, so Node's fetch globals never load (see there).
    inject: [BUNDLE_GLOBALS],
    // The SDK checks `body instanceof globalThis.ReadableStream` on each request; reading that global
    // loads Node's web streams (0.7 MB). A bot never sends a stream body: the check is simply false.
    define: { 'globalThis.ReadableStream': 'undefined' },
    minify: true,
    keepNames: true,
    logLevel: 'silent',
    banner: { js: "import { createRequire as __mpCreateRequire } from 'node:module'; const require = __mpCreateRequire(import.meta.url);" },
  });
  const entry = path.resolve(outfile);
  const outputs = [...result.outputFiles].sort((a, b) => Number(path.resolve(a.path) === entry) - Number(path.resolve(b.path) === entry));
  let bytes = 0;
  for (const f of outputs) {
    const tmp = `${f.path}.${process.pid}.tmp`;
    writeFileSync(tmp, f.contents);
    renameSync(tmp, f.path);
    bytes += f.contents.length;
  }
  pruneStaleChunks(dir, name, new Set(outputs.map((f) => path.basename(f.path))));
  return { file: outfile, ms: Date.now() - started, bytes };
}

function pruneStaleChunks(dir: string, name: string, current: Set<string>): void {
  const prefix = `${name}-`;
  const chunkRe = /-[A-Z0-9]{8}\.mjs$/; // esbuild's [hash]
  for (const f of readdirSync(dir)) {
    if (current.has(f) || !f.startsWith(prefix) || !chunkRe.test(f)) continue;
    try {
      if (Date.now() - statSync(path.join(dir, f)).mtimeMs > STALE_CHUNK_MS) rmSync(path.join(dir, f), { force: true });
    } catch {
      // removed meanwhile by another build
    }
  }
}
