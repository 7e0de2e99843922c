import { madeStreams, watchStdio } from './stdio.js';

const argv = process.argv.slice(2);
// One-shot commands keep the terminal for their own output; long-running ones log at info.
// Set before any module loads: loggers read the level when they are created.
const longRunning = new Set(['up', 'agent']);
process.env['MESHPILOT_LOG_LEVEL'] ??= longRunning.has(argv[0] ?? '') ? 'info' : 'warn';
/** The bundle's loader (scripts/cli-loader.cjs) keeps V8's compiled code for the next run; absent under tsx. */
const codeCache = (globalThis as { [k: symbol]: { save(): void } | undefined })[Symbol.for('meshpilot.codeCache')];

// No top-level await: the bundle is CommonJS (launcher/bundle.ts says why).
async function main(): Promise<void> {
  // A launcher runs for days beside its bots, I/O bound like them: it trades peak JavaScript speed for
  // memory with the bots' V8 settings that can still be set once node runs (launcher/bot-child.ts
  // BOT_NODE_ARGS says what each does). Measured with one bot, encryption on: launcher 127-132 MB RSS -> ~106.
  if (longRunning.has(argv[0] ?? '')) {
    const { setFlagsFromString } = await import('node:v8');
    for (const flag of ['--no-opt', '--no-sparkplug', '--wasm-tiering-budget=100000000', '--wasm-lazy-validation']) setFlagsFromString(flag);
  }
  // A reader that went away (`meshpilot … | head`) ends the command quietly, as other tools do: no
  // EPIPE stack trace. Any other write error is one line and exit 1. Attached when each stream is made:
  // until then the CLI writes without one (launcher/stdio.ts).
  watchStdio((stream) => {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      try { process.stderr.write(`meshpilot: cannot write output: ${err.message}\n`); } catch { /* stderr is gone too */ }
      process.exit(1);
    });
  });
  const { runCli } = await import('./cli.js');
  const code = await runCli(argv);
  process.exitCode = code;
  // Done: a lingering handle (a Matrix long poll, a keep-alive socket) must not hold the process.
  // The timer is unref'd, so it only fires when something else still keeps the process alive.
  // `meshpilot agent --config` returns once its server listens: that one must keep running.
  const servesForever = argv[0] === 'agent' && !['init', 'service', '--help', '-h'].includes(argv[1] ?? '');
  // A one-shot command is done when runCli returns. When all its output has reached the OS (files and
  // terminals are written synchronously; a pipe whose reader lags still holds bytes: then the process
  // ends as usual), exiting here skips the engine's teardown that a natural exit pays after the last
  // callback: 10-20 ms of every `meshpilot cap` and `--help`.
  const flushed = (): boolean => madeStreams().every((s) => s.writableLength === 0);
  // A one-shot command's compiled code is what the next one needs: saved now (where it is missing), never
  // by `up` or the agent, which run under other V8 flags (V8 takes a cache only under the flags it was made with).
  if (!servesForever && !longRunning.has(argv[0] ?? '')) codeCache?.save();
  if (!servesForever && !longRunning.has(argv[0] ?? '') && flushed()) process.exit(code);
  // Output a pipe's reader has not taken yet is not lost to that timer: it waits for it (it was cut at
  // 64 KiB when the reader took longer than 200 ms, `meshpilot cap … --output json | slow-reader`).
  if (!servesForever) setTimeout(function exitWhenFlushed() {
    if (flushed()) process.exit(code);
    else setTimeout(exitWhenFlushed, 50).unref();
  }, 200).unref();
}

void main();
