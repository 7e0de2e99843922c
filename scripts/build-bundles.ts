/**
 * Builds dist/meshpilot.cjs (CLI and launcher) and dist/device-bot.mjs (launcher/bundle.ts).
 * Run through tsx by scripts/bundle-fresh.mjs in a process of its own, so neither tsx nor esbuild's
 * service stays behind in the process that then runs meshpilot. Exit 1 with esbuild's message on failure.
 */
import { buildBundles } from '../launcher/bundle.js';

try {
  const b = await buildBundles();
  if (process.argv.includes('--verbose')) process.stderr.write(`[meshpilot] built ${b.files.join(', ')} (${Math.round(b.bytes / 1024)} KiB) in ${(b.ms / 1000).toFixed(1)} s\n`);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exitCode = 1;
}
