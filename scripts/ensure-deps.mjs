#!/usr/bin/env node
// Installs what is missing before `npm start` / `npm test` / `npm run bench`, so each works as the
// very first command after `git clone`:
//   - npm dependencies (npm ci) when node_modules is absent or older than package-lock.json;
//   - the bundles meshpilot runs from (dist/meshpilot.cjs, dist/device-bot.mjs; launcher/bundle.ts) when
//     missing or older than a source file, so the first command does not pay for the build;
//   - with --system (tests): Debian packages the test suite drives for real (apt-get, as root).
// Plain Node, no dependencies: it runs before any are installed.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildBundles, bundlesFresh } from './bundle-fresh.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (msg) => process.stderr.write(`[meshpilot setup] ${msg}\n`);

function ensureNodeModules() {
  const lock = join(root, 'package-lock.json');
  const stamp = join(root, 'node_modules', '.meshpilot-deps');
  const want = existsSync(lock) ? createHash('sha256').update(readFileSync(lock)).digest('hex') : 'nolock';
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  say('installing npm dependencies (first run; native modules build from source, ~1-2 min)…');
  const args = existsSync(lock) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund'];
  const r = spawnSync('npm', args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    say(`npm ${args[0]} failed (exit ${r.status}). Check the network access to the npm registry and run it again.`);
    process.exit(r.status ?? 1);
  }
  writeFileSync(stamp, want);
}

// Debian packages the tests use, keyed by a command that proves each is there.
const SYSTEM_PACKAGES = [
  { check: 'sshd', path: '/usr/sbin/sshd', pkg: 'openssh-server' },
  { check: 'ssh', pkg: 'openssh-client' },
  { check: 'wg', pkg: 'wireguard-tools' },
  { check: 'wireguard-go', pkg: 'wireguard-go' },
  { check: 'ip', path: '/usr/sbin/ip', pkg: 'iproute2' },
  { check: 'git', pkg: 'git' },
  { check: 'ffmpeg', pkg: 'ffmpeg' },
  { check: 'espeak-ng', pkg: 'espeak-ng' },
  { check: 'pocketsphinx_continuous', pkg: 'pocketsphinx' },
  { check: 'pocketsphinx-en-us', path: '/usr/share/pocketsphinx/model/en-us/en-us', pkg: 'pocketsphinx-en-us' },
  // the dashboard's browser tests drive it with playwright-core (test/dashboard*.test.ts)
  { check: 'chromium', path: '/usr/bin/chromium', pkg: 'chromium' },
  // the vm.* capabilities' podman backend and its tests (test/vm*.test.ts: runc, an image from busybox-static)
  { check: 'podman', pkg: 'podman' },
  { check: 'runc', path: '/usr/sbin/runc', pkg: 'runc' },
  { check: 'busybox-static', path: '/bin/busybox', pkg: 'busybox-static' },
  // rootless podman (test/vm-ssh.test.ts runs it as an unprivileged ssh user) needs newuidmap/newgidmap
  { check: 'newuidmap', path: '/usr/bin/newuidmap', pkg: 'uidmap' },
];

function has(entry) {
  if (entry.path && existsSync(entry.path)) return true;
  return spawnSync('sh', ['-c', `command -v ${entry.check}`], { stdio: 'ignore' }).status === 0;
}

function ensureSystemPackages() {
  if (process.platform !== 'linux') return;
  const missing = SYSTEM_PACKAGES.filter((e) => !has(e)).map((e) => e.pkg);
  if (missing.length === 0) return;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !existsSync('/usr/bin/apt-get')) {
    say(`missing system packages: ${missing.join(' ')}. Install them (apt-get install ${missing.join(' ')}) and run again.`);
    process.exit(1);
  }
  say(`installing system packages: ${missing.join(' ')}…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  // Another apt (a homeserver's setup, unattended-upgrades) may hold the lock: wait for it, not fail.
  const lock = ['-o', 'DPkg::Lock::Timeout=600'];
  execFileSync('apt-get', [...lock, 'update', '-qq'], { stdio: 'inherit', env });
  execFileSync('apt-get', [...lock, 'install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
}

ensureNodeModules();
if (!bundlesFresh(root) && !buildBundles(root)) say('could not build dist/ (see above); meshpilot will run from the TypeScript sources');
if (process.argv.includes('--system')) ensureSystemPackages();
