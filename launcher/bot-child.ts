/**
 * How a bot child process starts: the scrubbed environment it gets and the node/V8 flags it runs
 * with; how its output is read and how it is signalled. The supervisor forks every bot with these;
 * test/helpers/bot-env.ts and the benches start bots the same way.
 */
import type { ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

/** The only variables a child inherits from the launcher's environment. */
export const INHERITED_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'MESHPILOT_LOG_LEVEL'] as const;

/**
 * The environment of a bot child: the INHERITED_ENV subset of `parent`, MESHPILOT_HOME = home,
 * then `extra` (what the caller hands over on purpose, e.g. ANTHROPIC_API_KEY).
 */
export function childEnv(home: string, extra: Record<string, string> = {}, parent: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of INHERITED_ENV) {
    const v = parent[k];
    if (v !== undefined) env[k] = v;
  }
  env['MESHPILOT_HOME'] = home;
  for (const [k, v] of Object.entries(extra)) env[k] = v;
  return env;
}

let tsxLoaderUrl: string | undefined;
/** execArgv for forking `entry`: tsx's loader (absolute file URL) for TypeScript, nothing for JS. */
export function execArgvFor(entry: string): string[] {
  if (!/\.(c|m)?ts$/.test(entry)) return [];
  tsxLoaderUrl ??= pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  return ['--import', tsxLoaderUrl];
}

/*
 * Memory settings of every bot child (RSS per bot, `npx tsx bench/run.ts bot`). Bots are I/O bound and
 * many run side by side, so they trade peak JS speed for memory; WebAssembly stays on (ssh2's poly1305,
 * Matrix crypto), so no --jitless / --lite-mode.
 *
 * - glibc malloc: blocks of 32 KiB and up are mmapped and go back to the system when freed. Parsing and
 *   compiling the bundle churns through ~20-35 MB of V8 zone memory in 32 KiB segments; with glibc's
 *   default (dynamic) threshold they came from the main arena, which kept ~20 MB of freed memory per bot.
 *   GLIBC_TUNABLES is read by the dynamic loader: other C libraries ignore it.
 * - --no-opt --no-sparkplug: JavaScript runs in Ignition, V8's interpreter, only: no TurboFan code and
 *   zone memory, and no Sparkplug baseline code (1.5-2 MB of code space per bot, measured; CPU per
 *   message unchanged within noise). WebAssembly is compiled as before and still tiers up.
 * - --expose-gc: when a bot goes quiet it runs two compacting collections (bots/memory-settle.ts), which
 *   move live objects together so the emptied pages go back to the system (84-85 MB right after traffic, 78 MB at rest).
 * - --wasm-tiering-budget=100000000 (V8's default 1800000): the WebAssembly crypto starts on Liftoff, V8's
 *   baseline compiler, and a function moves to TurboFan once it has run ~this many bytes of code. At the
 *   default, the few hundred ms of key generation, signing and store loading at start already pushed
 *   hundreds of functions through TurboFan: ~0.45 s of CPU per bot start (measured, 20 bots on 2 cores:
 *   13 s up → 8 s up). A bot's crypto is a few calls per message; the truly hot functions still tier up
 *   over its lifetime.
 * - --wasm-lazy-validation: each WebAssembly function is validated when it is first compiled (compilation
 *   is lazy already) instead of all at load: compiling the crypto module takes 22 ms of CPU instead of 55.
 * - --max-semi-space-size=1: bots are I/O bound; a small young generation keeps their memory down.
 * - --max-old-space-size=512: a bound that also sizes V8's heap for a small process (measured: ~2 MB less
 *   than V8's default sizing for a machine's RAM); a bot's live heap is ~20 MB.
 */
/** Environment every bot child gets in addition to childEnv (an explicit `extra` variable wins). */
export const BOT_RUNTIME_ENV: Readonly<Record<string, string>> = { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=32768' };
/** Node/V8 flags every bot child gets, before the caller's nodeArgs (a later flag wins). */
export const BOT_NODE_ARGS: readonly string[] = [
  '--no-opt', '--no-sparkplug', '--wasm-tiering-budget=100000000', '--wasm-lazy-validation', '--max-old-space-size=512', '--max-semi-space-size=1',
  '--expose-gc',
];

/** The environment a bot child starts with: BOT_RUNTIME_ENV, then childEnv(home, extra, parent). */
export function botEnv(home: string, extra: Record<string, string> = {}, parent: NodeJS.ProcessEnv = process.env): Record<string, string> {
  return { ...BOT_RUNTIME_ENV, ...childEnv(home, extra, parent) };
}

/** execArgv for a bot child: BOT_NODE_ARGS, the caller's nodeArgs, then execArgvFor(entry). */
export function botExecArgv(entry: string, nodeArgs: readonly string[] = []): string[] {
  return [...BOT_NODE_ARGS, ...nodeArgs, ...execArgvFor(entry)];
}

const STDERR_LINE_MAX = 2000;
const PARTIAL_LINE_MAX = 16 * 1024;

/**
 * Reads a child's output: written through to the launcher's stderr when `forward`, and each
 * non-empty line (a longer one cut to STDERR_LINE_MAX characters) handed to `onLine`.
 */
export function pipeChildOutput(stream: NodeJS.ReadableStream | null, forward: boolean, onLine?: (line: string) => void): void {
  if (!stream) return;
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    if (forward) process.stderr.write(chunk);
    if (!onLine) return;
    partial += chunk;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    if (partial.length > PARTIAL_LINE_MAX) {
      lines.push(partial);
      partial = '';
    }
    for (const line of lines) {
      if (line) onLine(line.length > STDERR_LINE_MAX ? `${line.slice(0, STDERR_LINE_MAX)}…` : line);
    }
  });
  stream.on('end', () => {
    if (onLine && partial) onLine(partial.slice(0, STDERR_LINE_MAX));
    partial = '';
  });
}

/** Sends `sig` to the child's process group (it is a group leader: forked detached), else to the child. */
export function signalGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try { child.kill(sig); } catch { /* already gone */ }
  }
}
