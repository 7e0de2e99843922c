import { runCli } from './cli.js';

const argv = process.argv.slice(2);
// One-shot commands keep the terminal for their own output; long-running ones log at info.
const longRunning = new Set(['up', 'agent']);
process.env['MESHPILOT_LOG_LEVEL'] ??= longRunning.has(argv[0] ?? '') ? 'info' : 'warn';
const code = await runCli(argv);
process.exitCode = code;
