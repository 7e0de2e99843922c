/**
 * The CLI bundle (launcher/bundle.ts): CommonJS chunks loaded by scripts/cli-loader.cjs through V8's code
 * cache. The first one-shot command writes a cache per chunk it loaded, the next takes them; a cache V8
 * rejects changes nothing but the time; a cache of another build is never read.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { buildBundles } from '../launcher/bundle.js';
import { runCli } from '../launcher/cli.js';
import { CLI_COMMANDS } from '../launcher/commands/index.js';
import { commandTerms } from '../launcher/commands/program.js';
import { tempDir } from './helpers/tmp.js';

let dist = '';
let home = '';

function run(args: string[], cache = 'report'): { code: number | null; out: string; err: string; report: { accepted: number; rejected: number; compiled: number } | undefined } {
  const r = spawnSync(process.execPath, [path.join(dist, 'meshpilot.cjs'), ...args], {
    env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn', MESHPILOT_CODE_CACHE: cache },
    encoding: 'utf8',
    timeout: 30_000,
  });
  const m = /\[meshpilot\] code cache: (\d+) accepted, (\d+) rejected, (\d+) compiled\n/.exec(r.stderr);
  const report = m ? { accepted: Number(m[1]), rejected: Number(m[2]), compiled: Number(m[3]) } : undefined;
  return { code: r.status, out: r.stdout, err: r.stderr.replace(m?.[0] ?? '\0', ''), report };
}

const caches = (): string[] => readdirSync(dist).filter((f) => f.endsWith('.v8cache')).sort();

describe('CLI bundle code cache', { timeout: 120_000 }, () => {
  beforeAll(async () => {
    // inside the package, so that the bundle's externals (better-sqlite3) resolve from node_modules
    mkdirSync(path.join(PACKAGE_ROOT, '.meshpilot-test'), { recursive: true });
    dist = mkdtempSync(path.join(PACKAGE_ROOT, '.meshpilot-test', 'cli-cache-'));
    home = path.join(tempDir('mp-cli-cache-home-'), 'home');
    // the home enrolled once by the real bin: the temp bundle's package root (dist/..) has no templates
    const r = spawnSync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'meshpilot.cjs'), 'devices'], { env: { ...process.env, MESHPILOT_HOME: home }, encoding: 'utf8', timeout: 90_000 });
    expect(r.status, r.stderr).toBe(0);
    // as scripts/build-bundles.ts builds it: with the top-level commands' help terms
    await buildBundles(dist, { cliTerms: commandTerms(CLI_COMMANDS) });
  }, 180_000);
  afterAll(() => rmSync(dist, { recursive: true, force: true }));

  it('the first command writes a cache per chunk it loaded, the next one takes them all and prints the same', () => {
    expect(caches()).toEqual([]);
    const first = run(['--help']);
    expect(first.code).toBe(0);
    expect(first.out).toMatch(/^Usage: meshpilot \[options\] \[command\]/);
    expect(first.report?.accepted).toBe(0);
    const loaded = first.report?.compiled ?? 0;
    expect(loaded).toBeGreaterThan(3); // entry, commander, zod, the declarations…
    // one per chunk, named after the chunk and this build
    const written = caches();
    expect(written).toHaveLength(loaded);
    for (const f of written) expect(f).toMatch(/^meshpilot-[\w-]+-[A-Z0-9]{8}\.[0-9a-f]{12}\.v8cache$/);
    const second = run(['--help']);
    expect(second.report).toEqual({ accepted: loaded, rejected: 0, compiled: 0 });
    expect(second.out).toBe(first.out);
    expect(second.err).toBe(first.err);
  });

  it('the bundle\'s help (from the terms it carries) is the help of the sources (every command built)', async () => {
    for (const args of [['--help'], ['vm', '--help'], ['help', 'cap']]) {
      let live = '';
      const code = await runCli(args, { out: (t) => { live += t; }, err: (t) => { live += t; }, isTTY: false });
      const bundled = run(args);
      expect({ code: bundled.code, out: bundled.out + bundled.err }).toEqual({ code, out: live });
    }
  });

  it('cap runs through the cached chunks and caches the ones it added (catalog, runtime)', () => {
    const before = caches().length;
    const first = run(['cap', 'local', 'sys.info']);
    expect(first.code, first.err).toBe(0);
    expect(first.err).toMatch(/audit local #\d+ sys\.info ok/);
    expect(first.report?.accepted).toBe(before);
    expect(first.report?.compiled).toBeGreaterThan(0);
    expect(caches().length).toBe(before + (first.report?.compiled ?? 0));
    const second = run(['cap', 'local', 'sys.info']);
    expect(second.code).toBe(0);
    expect(second.report).toEqual({ accepted: caches().length, rejected: 0, compiled: 0 });
  });

  it('a cache V8 rejects is compiled past, same output, and replaced for the next run', () => {
    run(['--version']); // caches whatever --version loads that --help did not
    const reference = run(['--version']);
    expect(reference.report?.compiled).toBe(0);
    const loaded = reference.report?.accepted ?? 0;
    expect(loaded).toBeGreaterThan(0);
    // damaged caches: garbage of the same length
    for (const f of caches()) writeFileSync(path.join(dist, f), Buffer.alloc(readFileSync(path.join(dist, f)).length, 7));
    const damaged = run(['--version']);
    expect(damaged).toMatchObject({ code: 0, out: '0.1.0\n', err: reference.err });
    expect(damaged.report).toEqual({ accepted: 0, rejected: loaded, compiled: loaded });
    expect(run(['--version']).report).toEqual({ accepted: loaded, rejected: 0, compiled: 0 });
  });

  it('MESHPILOT_CODE_CACHE=off neither reads nor writes a cache; a cache of another build is never read', () => {
    const names = caches();
    const off = run(['--version'], 'off');
    expect(off).toMatchObject({ code: 0, out: '0.1.0\n', report: undefined });
    expect(caches()).toEqual(names);
    // the entry names its build: renamed for another build, the same caches are not this build's
    const entry = path.join(dist, 'meshpilot.cjs');
    const text = readFileSync(entry, 'utf8');
    const build = /const BUILD = '([0-9a-f]{12})';/.exec(text)?.[1];
    expect(build).toMatch(/^[0-9a-f]{12}$/);
    writeFileSync(entry, text.replace(`const BUILD = '${build!}';`, "const BUILD = '000000000000';"));
    const other = run(['--version']);
    expect(other.code).toBe(0);
    expect(other.report?.accepted).toBe(0);
    expect(caches().filter((f) => f.includes('.000000000000.'))).toHaveLength(other.report?.compiled ?? -1);
  });
});
