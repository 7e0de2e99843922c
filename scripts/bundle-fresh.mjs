// Is dist/meshpilot.mjs (with dist/device-bot.mjs) built from the sources as they are now? And the build.
// Plain Node, no dependencies: bin/meshpilot.mjs asks this before every command, so it must be cheap.
// launcher/bundle.ts writes dist/meshpilot-build.json with the time the build started and every source
// file that went in (plus package.json and npm's lock files). Fresh = each of them is older than that time.
// A source file that is not in the list cannot matter until a listed file imports it, which changes that
// file. Cost: one stat per listed file (~250, ~2 ms).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CLI_BUNDLE = join(ROOT, 'dist', 'meshpilot.mjs');
const STAMP = join(ROOT, 'dist', 'meshpilot-build.json');

/** True when the bundles exist and no source listed in the stamp changed since the build started. */
export function bundlesFresh(root = ROOT) {
  let stamp;
  try {
    stamp = JSON.parse(readFileSync(join(root, 'dist', 'meshpilot-build.json'), 'utf8'));
  } catch {
    return false;
  }
  if (typeof stamp?.builtFrom !== 'number' || !Array.isArray(stamp.inputs) || stamp.inputs.length === 0) return false;
  if (!existsSync(join(root, 'dist', 'meshpilot.mjs')) || !existsSync(join(root, 'dist', 'device-bot.mjs'))) return false;
  for (const rel of stamp.inputs) {
    let mtime;
    try {
      mtime = statSync(join(root, rel)).mtimeMs;
    } catch {
      // a listed lock file may not exist (no package-lock.json); a listed source that vanished means stale
      if (/(^|\/)(package-lock\.json|\.package-lock\.json)$/.test(rel)) continue;
      return false;
    }
    if (mtime >= stamp.builtFrom) return false;
  }
  return true;
}

/**
 * Builds both bundles in a child process (tsx + esbuild live and die there). Returns true on success;
 * on failure writes esbuild's message to stderr and returns false.
 */
export function buildBundles(root = ROOT, { verbose = false } = {}) {
  let tsx;
  try {
    tsx = pathToFileURL(createRequire(join(root, 'package.json')).resolve('tsx')).href;
  } catch {
    process.stderr.write('[meshpilot] cannot build dist/: tsx is not installed (run npm ci)\n');
    return false;
  }
  const args = ['--import', tsx, join(root, 'scripts', 'build-bundles.ts'), ...(verbose ? ['--verbose'] : [])];
  // Loaded here, not at the top: child_process costs every command ~7 ms to load, and builds are rare.
  const { spawnSync } = createRequire(import.meta.url)('node:child_process');
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status === 0) {
    if (verbose && r.stderr) process.stderr.write(r.stderr);
    return true;
  }
  process.stderr.write(`[meshpilot] building dist/ failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}\n`);
  return false;
}
