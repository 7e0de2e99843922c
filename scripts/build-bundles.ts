/**
 * Builds dist/meshpilot.cjs (CLI and launcher) and dist/device-bot.mjs (launcher/bundle.ts).
 * Run through tsx by scripts/bundle-fresh.cjs in a process of its own, so neither tsx nor esbuild's
 * service stays behind in the process that then runs meshpilot. Exit 1 with esbuild's message on failure.
 */
// Taken before any source is read: a source edited from here on is newer than the stamp's build time.
const startedAt = Date.now();
try {
  const { buildBundles } = await import('../launcher/bundle.js');
  const { CLI_COMMANDS } = await import('../launcher/commands/index.js');
  const { commandTerms } = await import('../launcher/commands/program.js');
  // the top-level commands' help terms, from the declarations this build bundles (launcher/cli.ts uses them)
  const b = await buildBundles(undefined, { cliTerms: commandTerms(CLI_COMMANDS), startedAt });
  if (process.argv.includes('--verbose')) process.stderr.write(`[meshpilot] built ${b.files.join(', ')} (${Math.round(b.bytes / 1024)} KiB) in ${(b.ms / 1000).toFixed(1)} s\n`);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exitCode = 1;
}
