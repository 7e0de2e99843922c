/**
 * The pre-built bundles meshpilot runs from: the device bot (dist/device-bot.mjs, forked once per device)
 * and the CLI / launcher (dist/meshpilot.cjs, what bin/meshpilot.cjs runs). Loading pre-built files is
 * faster and lighter than transpiling the sources at run time (tsx keeps esbuild's ~130 MB service
 * process alive beside the program). Both are built together by scripts/build-bundles.ts: after `npm ci`
 * (scripts/ensure-deps.mjs) and whenever bin/meshpilot.cjs finds a source newer than the build
 * (dist/meshpilot-build.json lists every source file that went in; scripts/bundle-fresh.cjs checks it).
 * Native and dynamically-loading packages stay external (resolved from node_modules).
 *
 * Code splitting: modules imported lazily (the LLM client and @anthropic-ai/sdk, the ssh and mesh
 * transports, undici for voice/mesh; in the CLI each command's heavier modules) become chunks that a
 * process parses only when it uses them. Chunks sit beside the entry (dist/<entry>-<name>-<hash>.mjs; the
 * CLI's are CommonJS, .cjs, for V8's code cache: buildCliBundle),
 * not in a subfolder, so paths that bundled modules derive from import.meta.url (capabilities/home.ts
 * PACKAGE_ROOT) stay right whichever chunk they land in. Files are written atomically, chunks before
 * the entry, so a process starting during a rebuild never loads a half-written file or an entry whose
 * chunks are missing. esbuild's service process is stopped after each build: nothing keeps it alive.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../capabilities/home.js';

export const BOT_SOURCE = path.join(PACKAGE_ROOT, 'bots', 'device-main.ts');
export const BOT_BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'device-bot.mjs');
const BUNDLE_GLOBALS = path.join(PACKAGE_ROOT, 'bots', 'bundle-globals.ts');
export const CLI_SOURCE = path.join(PACKAGE_ROOT, 'launcher', 'main.ts');
/** The CLI's entry: scripts/cli-loader.cjs, which loads the CommonJS chunks through V8's code cache. */
export const CLI_BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'meshpilot.cjs');
const CLI_LOADER = path.join(PACKAGE_ROOT, 'scripts', 'cli-loader.cjs');
/** What went into the last build (read by scripts/bundle-fresh.cjs, which bin/meshpilot.cjs runs first). */
export const BUILD_STAMP = path.join(PACKAGE_ROOT, 'dist', 'meshpilot-build.json');

// Native modules stay outside; everything else (matrix-bot-sdk's whole dependency tree included) is
// bundled, which is what saves each bot process from resolving and lexing hundreds of CommonJS files.
// The crypto shim stays outside so it can still find a real crypto module at run time.
const EXTERNAL = ['better-sqlite3', 'ssh2', 'cpu-features', '@matrix-org/matrix-sdk-crypto-nodejs'];

/**
 * Packages a bot never calls but which load with their parents: pino's worker-thread transports, and
 * matrix-bot-sdk's appservice server (express, morgan), Postgres storage, and HTML helpers (we send
 * our own plain + HTML bodies), and `request` (matrix-bot-sdk's HTTP goes through bots/matrix/sdk-http.ts;
 * request's tree — psl, mime-db, ajv, sshpk, tough-cookie, har-validator… — was 1.9 of the 3 MB), and
 * lowdb, which pulls in all of lodash (the SDK's file storage providers; bots/matrix/crypto-storage.ts has its own).
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

/**
 * commander requires node:child_process at load (which loads node:net: ~3 ms of every command) for the
 * executable subcommands meshpilot never declares: in the CLI bundle it is required on first use.
 */
const commanderLazyChildProcess = {
  name: 'commander-lazy-child-process',
  setup(b: { onLoad: (o: { filter: RegExp }, f: (a: { path: string }) => { contents: string; loader: 'js' }) => void }): void {
    b.onLoad({ filter: /[\\/]node_modules[\\/]commander[\\/]lib[\\/]command\.js$/ }, (a) => {
      const text = readFileSync(a.path, 'utf8');
      const eager = "const childProcess = require('node:child_process');";
      if (!text.includes(eager)) throw new Error(`${a.path}: no "${eager}" to make lazy (commander changed: update launcher/bundle.ts)`);
      return { contents: text.replace(eager, "const childProcess = { spawn: (...a) => require('node:child_process').spawn(...a) };"), loader: 'js' };
    });
  },
};

/** Chunks of an older build that this one no longer uses are removed once they are this old (a bot still running from that build may yet import them). */
const STALE_CHUNK_MS = 24 * 3600_000;

type Plugin = typeof stubUnused | typeof zodEnglishOnly | typeof commanderLazyChildProcess;
interface Built { file: string; ms: number; bytes: number; inputs: string[] }

/**
 * Builds the device bot bundle; returns the entry's path, how long it took and the bytes written (entry
 * and chunks). `outfile` must end in .mjs; its chunks are written beside it as <name>-<chunk>-<hash>.mjs.
 * Throws with esbuild's message on failure.
 */
export async function buildBotBundle(outfile: string = BOT_BUNDLE): Promise<{ file: string; ms: number; bytes: number }> {
  try {
    const { file, ms, bytes } = await buildOne(BOT_SOURCE, outfile, {
      plugins: [stubUnused, zodEnglishOnly],
      // The SDK's `Headers` / `FormData` become bots/http.ts's, so Node's fetch globals never load (see there).
      inject: [BUNDLE_GLOBALS],
      // The SDK checks `body instanceof globalThis.ReadableStream` on each request; reading that global
      // loads Node's web streams (0.7 MB). A bot never sends a stream body: the check is simply false.
      define: { 'globalThis.ReadableStream': 'undefined' },
    });
    return { file, ms, bytes };
  } finally {
    await stopBundler();
  }
}

/**
 * Builds the CLI / launcher bundle (dist/meshpilot.cjs and its chunks) and the device bot bundle beside it,
 * then writes the stamp that lets bin/meshpilot.cjs tell whether they are still fresh. `dir` is for tests.
 */
export async function buildBundles(dir: string = path.dirname(CLI_BUNDLE), opts: CliBuildOptions = {}): Promise<{ ms: number; bytes: number; files: string[] }> {
  const started = opts.startedAt ?? Date.now();
  try {
    const version = (JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? '0.0.0';
    const cli = await buildCliBundle(path.join(dir, path.basename(CLI_BUNDLE)), version, opts);
    const bot = await buildOne(BOT_SOURCE, path.join(dir, path.basename(BOT_BUNDLE)), {
      plugins: [stubUnused, zodEnglishOnly],
      inject: [BUNDLE_GLOBALS],
      define: { 'globalThis.ReadableStream': 'undefined' },
    });
    // Sources only (node_modules is covered by npm's own lock file there); the stamp is written last.
    const inputs = [...new Set([...cli.inputs, ...bot.inputs])].filter((p) => !/(^|[\\/])node_modules[\\/]/.test(p)).sort();
    const stamp = { builtFrom: started, inputs: [...inputs, path.relative(PACKAGE_ROOT, CLI_LOADER), 'package.json', 'package-lock.json', 'node_modules/.package-lock.json'] };
    const stampFile = path.join(dir, path.basename(BUILD_STAMP));
    writeFileSync(`${stampFile}.${process.pid}.tmp`, JSON.stringify(stamp));
    renameSync(`${stampFile}.${process.pid}.tmp`, stampFile);
    return { ms: Date.now() - started, bytes: cli.bytes + bot.bytes, files: [cli.file, bot.file] };
  } finally {
    await stopBundler();
  }
}

export interface CliBuildOptions {
  /**
   * Every top-level command's help term (launcher/commands/program.ts commandTerms(CLI_COMMANDS), which
   * scripts/build-bundles.ts computes from the sources it bundles): with them a command line builds only the
   * commands it names (launcher/cli.ts). Without, the bundle builds every command at start.
   */
  cliTerms?: Readonly<Record<string, string>>;
  /** When the sources began to be read (the stamp's `builtFrom`): before cliTerms' declarations were imported. */
  startedAt?: number;
}

/**
 * The CLI / launcher: esbuild's split ES build, each file then converted to CommonJS (chunks import each
 * other through require(), `import()` becomes a require() in a promise, `import.meta.url` the chunk's
 * own URL), and the entry `outfile` (.cjs) is scripts/cli-loader.cjs naming the main chunk and the build.
 * Why CommonJS: Node 20 compiles an ES module anew on every run, while a vm.Script takes V8's code cache
 * (the loader's doc says how it is kept). `--help` and `cap` spent ~40 ms compiling ~300 KB of chunks.
 */
async function buildCliBundle(outfile: string, version: string, opts: CliBuildOptions): Promise<Built> {
  const started = Date.now();
  if (!outfile.endsWith('.cjs')) throw new Error(`the CLI bundle must be a .cjs file (got ${outfile})`);
  const { build, transform } = await import('esbuild');
  const dir = path.dirname(outfile);
  const name = path.basename(outfile, '.cjs');
  mkdirSync(dir, { recursive: true });
  const result = await build({
    ...commonOptions(name),
    entryPoints: { [`${name}-entry`]: CLI_SOURCE },
    entryNames: '[name]-[hash]',
    outdir: dir,
    plugins: [stubUnused, zodEnglishOnly, commanderLazyChildProcess],
    // esbuild finds its native binary beside its own package: it cannot be bundled (only `up` run from
    // the sources ever loads it)
    external: [...EXTERNAL, 'esbuild'],
    // capabilities/agent/server.ts reads ../../package.json beside its source, which is not where the bundle is
    define: {
      __MESHPILOT_AGENT_VERSION__: JSON.stringify(version), __MESHPILOT_CLI_BUNDLE__: 'true',
      ...(opts.cliTerms ? { __MESHPILOT_CLI_TERMS__: JSON.stringify(opts.cliTerms) } : {}),
    },
    // Names as written instead of keepNames: keepNames calls a helper for every function and class as each
    // chunk loads (zod, commander: ~20 ms of every command). Unminified names keep `.name` (error classes
    // that name themselves after their constructor) except where esbuild renames a clash (Foo -> Foo2).
    minify: false, minifySyntax: true, minifyWhitespace: true, keepNames: false,
  });
  const chunkRef = new RegExp(`"\\./(${name}-[\\w-]+)\\.mjs"`, 'g');
  const chunks: { file: string; code: string }[] = [];
  let main = '';
  for (const f of result.outputFiles) {
    const r = await transform(f.text, {
      format: 'cjs', platform: 'node', target: 'node20', minifyWhitespace: true, logLevel: 'silent',
      define: { 'import.meta.url': '__mpUrl' }, supported: { 'dynamic-import': false },
    });
    const odd = r.warnings.find((w) => /import\.meta/.test(w.text));
    if (odd) throw new Error(`${path.basename(f.path)}: ${odd.text} (only import.meta.url is provided to the CLI's chunks)`);
    const file = f.path.replace(/\.mjs$/, '.cjs');
    const code = r.code.replace(chunkRef, '"./$1.cjs"');
    // each chunk is the function the loader calls (scripts/cli-loader.cjs): strict, as the ES modules were
    chunks.push({ file, code: `(function (exports, require, module, __mpUrl) {"use strict";${code}\n})` });
    if (result.metafile.outputs[path.relative(PACKAGE_ROOT, f.path)]?.entryPoint === path.relative(PACKAGE_ROOT, CLI_SOURCE)) main = path.basename(file);
  }
  if (!main) throw new Error('the CLI build has no entry chunk');
  // The caches' key: V8 checks a cache against its source's length only, so a cache must never outlive
  // the exact text it was made from (the chunks, and the loader's wrapper around each).
  const loaderText = readFileSync(CLI_LOADER, 'utf8');
  const hash = createHash('sha256').update(loaderText);
  for (const c of chunks) hash.update(c.code);
  const buildId = hash.digest('hex').slice(0, 12);
  const loader = loaderText.replace('__MESHPILOT_MAIN_CHUNK__', main).replace('__MESHPILOT_BUILD_ID__', buildId);
  // chunks first, the entry last: a process starting meanwhile runs the old entry with its old chunks
  let bytes = 0;
  for (const c of [...chunks, { file: outfile, code: loader }]) {
    const tmp = `${c.file}.${process.pid}.tmp`;
    writeFileSync(tmp, c.code);
    renameSync(tmp, c.file);
    bytes += Buffer.byteLength(c.code);
  }
  // the ES entry of the builds before this one: nothing may run it any more
  rmSync(path.join(dir, `${name}.mjs`), { force: true });
  pruneStaleChunks(dir, name, new Set(chunks.map((c) => path.basename(c.file))), buildId);
  return { file: outfile, ms: Date.now() - started, bytes, inputs: Object.keys(result.metafile.inputs).filter((p) => !p.includes(':')) };
}

/** Stops esbuild's service process (~130 MB); the next build starts a new one. */
export async function stopBundler(): Promise<void> {
  const { stop } = await import('esbuild');
  await stop();
}

/** What both builds share: split ES output in memory, minified, names kept, a metafile for the stamp. */
function commonOptions(name: string): Record<string, unknown> & { write: false; metafile: true } {
  return {
    chunkNames: `${name}-[name]-[hash]`,
    outExtension: { '.js': '.mjs' },
    splitting: true,
    write: false,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: EXTERNAL,
    minify: true,
    keepNames: true,
    metafile: true,
    absWorkingDir: PACKAGE_ROOT,
    logLevel: 'silent',
  };
}

async function buildOne(source: string, outfile: string, extra: { plugins: Plugin[]; inject?: string[]; define: Record<string, string>; external?: string[] }): Promise<Built> {
  const started = Date.now();
  if (!outfile.endsWith('.mjs')) throw new Error(`a bundle must be an .mjs file (got ${outfile})`);
  const { build } = await import('esbuild');
  const dir = path.dirname(outfile);
  const name = path.basename(outfile, '.mjs');
  mkdirSync(dir, { recursive: true });
  const result = await build({
    ...commonOptions(name),
    entryPoints: { [name]: source },
    outdir: dir,
    entryNames: '[name]',
    ...extra,
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
  // metafile input paths are relative to absWorkingDir; plugin namespaces (mp-stub:…) are not files
  const inputs = Object.keys(result.metafile.inputs).filter((p) => !p.includes(':'));
  return { file: outfile, ms: Date.now() - started, bytes, inputs };
}

/**
 * Removes chunks of older builds once STALE_CHUNK_MS old, and at once the code caches (scripts/cli-loader.cjs)
 * of any build but `buildId`: a process of an older build that finds none just compiles.
 */
function pruneStaleChunks(dir: string, name: string, current: Set<string>, buildId?: string): void {
  const prefix = `${name}-`;
  const chunkRe = /-[A-Z0-9]{8}\.[cm]js$/; // esbuild's [hash]
  const cacheRe = /-[A-Z0-9]{8}\.([0-9a-f]+)\.v8cache$/;
  for (const f of readdirSync(dir)) {
    if (current.has(f) || !f.startsWith(prefix)) continue;
    const cache = cacheRe.exec(f);
    try {
      if (cache) {
        if (cache[1] !== buildId) rmSync(path.join(dir, f), { force: true });
      } else if (chunkRe.test(f) && Date.now() - statSync(path.join(dir, f)).mtimeMs > STALE_CHUNK_MS) rmSync(path.join(dir, f), { force: true });
    } catch {
      // removed meanwhile by another build
    }
  }
}
