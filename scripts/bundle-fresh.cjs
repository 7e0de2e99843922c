'use strict';
// Is dist/meshpilot.cjs (with dist/device-bot.mjs) built from the sources as they are now? And the build.
// Plain Node, no dependencies, CommonJS: bin/meshpilot.cjs asks this before every command, so it must be
// cheap (scripts/bundle-fresh.mjs re-exports it for ES callers). launcher/bundle.ts writes
// dist/meshpilot-build.json with the time the build started and every source file that went in (plus
// package.json and npm's lock files). Fresh = each of them is older than that time. A source file that is
// not in the list cannot matter until a listed file imports it, which changes that file. Cost: one stat per
// listed file (~250, ~2 ms).
const { existsSync, readFileSync, statSync } = require('node:fs');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');

const ROOT = join(__dirname, '..');
const CLI_BUNDLE = join(ROOT, 'dist', 'meshpilot.cjs');
const LOCK_FILE = /(^|\/)(package-lock\.json|\.package-lock\.json)$/;

/** True when the bundles exist and no source listed in the stamp changed since the build started. */
function bundlesFresh(root = ROOT) {
  let stamp;
  try {
    stamp = JSON.parse(readFileSync(join(root, 'dist', 'meshpilot-build.json'), 'utf8'));
  } catch {
    return false;
  }
  if (typeof stamp?.builtFrom !== 'number' || !Array.isArray(stamp.inputs) || stamp.inputs.length === 0) return false;
  if (!existsSync(join(root, 'dist', 'meshpilot.cjs')) || !existsSync(join(root, 'dist', 'device-bot.mjs'))) return false;
  const base = `${root}/`; // inputs are relative paths with '/' (launcher/bundle.ts): no path.join per file
  for (const rel of stamp.inputs) {
    // a missing file is undefined rather than an exception
    const st = statSync(base + rel, { throwIfNoEntry: false });
    if (st === undefined) {
      // a listed lock file may not exist (no package-lock.json); a listed source that vanished means stale
      if (LOCK_FILE.test(rel)) continue;
      return false;
    }
    if (st.mtimeMs >= stamp.builtFrom) return false;
  }
  return true;
}

/**
 * Builds both bundles in a child process (tsx + esbuild live and die there). Returns true on success;
 * on failure writes esbuild's message to stderr and returns false.
 */
function buildBundles(root = ROOT, { verbose = false } = {}) {
  // Loaded here, not at the top: builds are rare, and child_process costs every command ~7 ms to load.
  const { createRequire } = require('node:module');
  let tsx;
  try {
    tsx = pathToFileURL(createRequire(join(root, 'package.json')).resolve('tsx')).href;
  } catch {
    process.stderr.write('[meshpilot] cannot build dist/: tsx is not installed (run npm ci)\n');
    return false;
  }
  const args = ['--import', tsx, join(root, 'scripts', 'build-bundles.ts'), ...(verbose ? ['--verbose'] : [])];
  const { spawnSync } = require('node:child_process');
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status === 0) {
    if (verbose && r.stderr) process.stderr.write(r.stderr);
    return true;
  }
  process.stderr.write(`[meshpilot] building dist/ failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}\n`);
  return false;
}

module.exports = { ROOT, CLI_BUNDLE, bundlesFresh, buildBundles };
