const argv = process.argv.slice(2);
// One-shot commands keep the terminal for their own output; long-running ones log at info.
// Set before any module loads: loggers read the level when they are created.
const longRunning = new Set(['up', 'agent']);
process.env['MESHPILOT_LOG_LEVEL'] ??= longRunning.has(argv[0] ?? '') ? 'info' : 'warn';
// A launcher runs for days beside its bots, I/O bound like them: it trades peak JavaScript speed for
// memory with the bots' V8 settings that can still be set once node runs (launcher/bot-child.ts
// BOT_NODE_ARGS says what each does). Measured with one bot, encryption on: launcher 127-132 MB RSS -> ~106.
if (longRunning.has(argv[0] ?? '')) {
  const { setFlagsFromString } = await import('node:v8');
  for (const flag of ['--no-opt', '--no-sparkplug', '--wasm-tiering-budget=100000000', '--wasm-lazy-validation']) setFlagsFromString(flag);
}
const { runCli } = await import('./cli.js');
const code = await runCli(argv);
process.exitCode = code;
// Done: a lingering handle (a Matrix long poll, a keep-alive socket) must not hold the process.
// The timer is unref'd, so it only fires when something else still keeps the process alive.
// `meshpilot agent --config` returns once its server listens: that one must keep running.
const servesForever = argv[0] === 'agent' && !['init', 'service', '--help', '-h'].includes(argv[1] ?? '');
if (!servesForever) setTimeout(() => process.exit(code), 200).unref();
