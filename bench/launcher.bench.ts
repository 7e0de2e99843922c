/**
 * Launcher and CLI figures, run as a user runs them (`meshpilot …`: package.json's bin, bin/meshpilot.cjs, which
 * runs the pre-built bundle dist/meshpilot.cjs).
 *
 * - launcher.tree_rss: RSS of `meshpilot up` plus every process under it (walked in /proc), at rest, with
 *   one device bot and encryption on (the operator room included). The homeserver is the real Synapse at
 *   MESHPILOT_TEST_HOMESERVER when set (test/helpers/test-homeserver.ts), else the fixture. RSS counts
 *   pages shared between processes (the node binary) once per process: PSS (/proc/<pid>/smaps_rollup),
 *   which splits them, is printed beside it, with each process's share.
 * - cli.help, cli.cap_sys_info: wall time of `meshpilot --help` and `meshpilot cap local sys.info`
 *   (median of several runs; min-max printed), with `node -e 0` on the same machine beside them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SETTLE_IDLE_MS } from '../bots/memory-settle.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { buildBundles, bundlesFresh } from '../scripts/bundle-fresh.mjs';
import { processTree } from './proc-tree.js';
import { textReply } from '../test/fixtures/anthropic.js';
import { createBotEnv } from '../test/helpers/bot-env.js';
import { bodyOf } from '../test/helpers/phone.js';
import type { BenchFigure } from './run.js';

export const figures = ['launcher.tree_rss', 'cli.help', 'cli.cap_sys_info'];

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.cjs');
const say = (line: string): void => void process.stderr.write(`# ${line}\n`);

const mb = (kb: number): number => Math.round(kb / 1024);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

/** `nodeArgs` / `extraEnv`: for trying launcher settings (bench/run.ts uses neither). */
export async function treeRss(nodeArgs: string[] = [], extraEnv: Record<string, string> = {}): Promise<BenchFigure> {
  ensureBundles();
  const env = await createBotEnv({ encryption: 'auto', phoneCrypto: true });
  let launcher: ChildProcess | undefined;
  let out = '';
  const waitOut = (re: RegExp, ms: number): Promise<void> => new Promise((resolve, reject) => {
    const t0 = Date.now();
    const iv = setInterval(() => {
      if (re.test(out)) { clearInterval(iv); resolve(); } else if (Date.now() - t0 > ms) { clearInterval(iv); reject(new Error(`launcher did not print ${re} in ${ms} ms:\n${out.slice(-2000)}`)); }
    }, 100);
  });
  try {
    say(`homeserver: ${env.hs.kind} ${env.hs.url}`);
    await env.registerBot('bench');
    env.writeManifest('bench', '  sys.info: {}\n  sys.health: {}\n');
    launcher = spawn(process.execPath, [...nodeArgs, BIN, 'up'], {
      env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: 'warn', ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    launcher.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
    launcher.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
    await waitOut(/launcher running \(pid \d+\)/, 90_000);
    if (!/operator room: health alerts/.test(out)) say(`operator room NOT running: ${/operator room not started: .*/.exec(out)?.[0] ?? '?'}`);
    // Some traffic first, as a bot between conversations: an LLM turn and a command in the encrypted DM.
    const botUser = env.botUserId('bench');
    const live = await env.phone.waitFor((e) => e.sender === botUser && /✓ bench live/.test(bodyOf(e)), 60_000);
    await env.phone.waitFor((e) => e.room_id === live.room_id && e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join');
    env.llm.respond(() => textReply('ok'));
    for (const text of ['hello', '!status', 'hello again']) {
      const from = env.phone.events.length;
      await env.phone.client.sendTextMessage(live.room_id, text);
      await env.phone.waitFor((e) => env.phone.events.indexOf(e) >= from && e.sender === botUser && e.type === 'm.room.message', 30_000)
        .catch((err: unknown) => { throw new Error(`no answer to "${text}": ${(err as Error).message}\nlauncher output:\n${out.slice(-3000)}`); });
    }
    // At rest: the bot hands its traffic garbage back after SETTLE_IDLE_MS of quiet (bots/memory-settle.ts).
    await new Promise((r) => setTimeout(r, SETTLE_IDLE_MS + 3000));
    const tree = processTree(launcher.pid!);
    for (const p of tree) say(`  pid ${p.pid} ${p.name}: RSS ${mb(p.rssKb)} MB, PSS ${mb(p.pssKb)} MB`);
    const rss = tree.reduce((s, p) => s + p.rssKb, 0);
    const pss = tree.reduce((s, p) => s + p.pssKb, 0);
    say(`launcher tree: ${tree.length} processes, RSS ${mb(rss)} MB, PSS ${mb(pss)} MB`);
    return { name: 'launcher.tree_rss', value: mb(rss), unit: 'MB', target: '<= 200' };
  } finally {
    if (launcher && launcher.exitCode === null) {
      const exited = new Promise((r) => launcher!.once('exit', r));
      launcher.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (launcher.exitCode === null) launcher.kill('SIGKILL');
    }
    await env.cleanup();
  }
}

/** Builds dist/ when a source changed, so that no timed run pays for a rebuild. */
function ensureBundles(): void {
  if (!bundlesFresh() && !buildBundles()) throw new Error('could not build dist/ (see above)');
}

/** Wall time (s) of one run of node with these arguments; throws on a non-zero exit. */
function timeRun(args: string[], env: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const s = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr.slice(-500)}`);
  return s;
}

function cliTimes(): BenchFigure[] {
  const home = mkdtempSync(path.join(os.tmpdir(), 'mp-bench-cli-'));
  const env = { ...process.env, MESHPILOT_HOME: path.join(home, 'home') };
  try {
    const runs = 9;
    const series = (args: string[]): number[] => {
      const xs: number[] = [];
      for (let i = 0; i < runs; i++) {
        ensureBundles(); // untimed: another process may have edited a source meanwhile
        xs.push(timeRun(args, env));
      }
      return xs;
    };
    timeRun([BIN, 'cap', 'local', 'sys.info'], env); // first run: creates the data dir and enrolls `local`
    const floor = series(['-e', '0']);
    const help = series([BIN, '--help']);
    const cap = series([BIN, 'cap', 'local', 'sys.info']);
    const range = (xs: number[]): string => `${Math.min(...xs).toFixed(3)}-${Math.max(...xs).toFixed(3)} s`;
    say(`node -e 0: median ${median(floor).toFixed(3)} s (${range(floor)}); --help ${range(help)}; cap local sys.info ${range(cap)}`);
    return [
      { name: 'cli.help', value: median(help), unit: 's', target: `<= 0.2 (node -e 0 floor ${median(floor).toFixed(3)} s)` },
      { name: 'cli.cap_sys_info', value: median(cap), unit: 's', target: `<= 0.4 (node -e 0 floor ${median(floor).toFixed(3)} s)` },
    ];
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}

/** `npx tsx bench/run.ts cli` (or `cli.cap_sys_info`) asks for the CLI figures only: no launcher tree then. */
function cliOnly(): boolean {
  const filter = process.argv.slice(2).find((a) => !a.startsWith('-'));
  return filter !== undefined && filter.startsWith('cli');
}

export async function run(): Promise<BenchFigure[]> {
  const out = cliTimes();
  if (!cliOnly()) out.unshift(await treeRss());
  return out;
}
