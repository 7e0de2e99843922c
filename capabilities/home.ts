/**
 * The data directory, MESHPILOT_HOME (default ~/.meshpilot):
 *   config.yaml, meshpilot.db, manifests/<device>.yaml, keys/<device>/ (0700), bots/<device>/
 * The first run creates it and enrolls this machine as device `local` (read-only template).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderTemplate, type DeviceOs } from './manifest.js';

export interface HomeLayout {
  root: string;
  db: string;
  config: string;
  manifests: string;
  keys: string;
  bots: string;
  archive: string;
}

export function resolveHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env['MESHPILOT_HOME'];
  if (fromEnv && fromEnv.trim()) return path.resolve(fromEnv.replace(/^~(?=$|\/)/, os.homedir()));
  return path.join(os.homedir(), '.meshpilot');
}

export function layout(root: string): HomeLayout {
  return {
    root,
    db: path.join(root, 'meshpilot.db'),
    config: path.join(root, 'config.yaml'),
    manifests: path.join(root, 'manifests'),
    keys: path.join(root, 'keys'),
    bots: path.join(root, 'bots'),
    archive: path.join(root, 'archive'),
  };
}

/** Where the project's own files live (templates, service units), whatever the cwd. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const TEMPLATES_DIR = path.join(PACKAGE_ROOT, 'manifests', 'templates');

export function thisOs(): DeviceOs {
  return process.platform === 'darwin' ? 'darwin' : process.platform === 'win32' ? 'windows' : 'linux';
}

export function templateText(name: string): string {
  return readFileSync(path.join(TEMPLATES_DIR, `${name}.yaml`), 'utf8');
}

export interface EnsureHomeResult {
  home: HomeLayout;
  created: boolean;
  enrolledLocal: boolean;
}

/** Creates the data directory when missing; on the very first run enrolls this machine as `local`. */
export function ensureHome(root: string = resolveHome()): EnsureHomeResult {
  const home = layout(root);
  const firstRun = !existsSync(home.manifests);
  mkdirSync(home.root, { recursive: true, mode: 0o700 });
  for (const dir of [home.manifests, home.bots, home.archive]) mkdirSync(dir, { recursive: true, mode: 0o700 });
  mkdirSync(home.keys, { recursive: true, mode: 0o700 });
  chmodSync(home.keys, 0o700);
  let enrolledLocal = false;
  const localManifest = path.join(home.manifests, 'local.yaml');
  if (firstRun && !existsSync(localManifest)) {
    const text = renderTemplate(templateText(`${thisOs()}.readonly`), 'local');
    writeFileSync(localManifest, text, { mode: 0o600 });
    enrolledLocal = true;
  }
  return { home, created: firstRun, enrolledLocal };
}
