/**
 * bin/meshpilot.cjs (and bin/meshpilot.mjs, which runs it) runs the pre-built dist/meshpilot.cjs, never code
 * older than the sources (scripts/bundle-fresh.cjs), and `meshpilot up` leaves no esbuild or tsx process
 * beside the launcher.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { processTree } from '../bench/proc-tree.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { bundlesFresh } from '../scripts/bundle-fresh.mjs';
import { createBotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { tempDir } from './helpers/tmp.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');

/** A package root with both bundles and a stamp listing `inputs`, built at `builtFrom`. */
function fakeRoot(inputs: string[], builtFrom: number): string {
  const root = tempDir('mp-fresh-');
  mkdirSync(path.join(root, 'dist'));
  writeFileSync(path.join(root, 'dist', 'meshpilot.cjs'), '');
  writeFileSync(path.join(root, 'dist', 'device-bot.mjs'), '');
  for (const f of inputs) {
    mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
    writeFileSync(path.join(root, f), '');
    utimesSync(path.join(root, f), new Date(builtFrom - 60_000), new Date(builtFrom - 60_000));
  }
  writeFileSync(path.join(root, 'dist', 'meshpilot-build.json'), JSON.stringify({ builtFrom, inputs: [...inputs, 'package-lock.json'] }));
  return root;
}

describe('bundle freshness', () => {
  it('fresh only while every source listed in the stamp is older than the build', () => {
    const now = Date.now();
    const root = fakeRoot(['launcher/main.ts', 'bots/matrix.ts'], now);
    expect(bundlesFresh(root)).toBe(true); // package-lock.json absent: allowed
    utimesSync(path.join(root, 'bots', 'matrix.ts'), new Date(now + 1000), new Date(now + 1000));
    expect(bundlesFresh(root)).toBe(false);
  });

  it('stale when a listed source is gone, a bundle is missing, or there is no stamp', () => {
    const now = Date.now();
    const gone = fakeRoot(['launcher/main.ts'], now);
    writeFileSync(path.join(gone, 'dist', 'meshpilot-build.json'), JSON.stringify({ builtFrom: now, inputs: ['launcher/main.ts', 'launcher/removed.ts'] }));
    expect(bundlesFresh(gone)).toBe(false);
    const noBot = fakeRoot(['launcher/main.ts'], now);
    spawnSync('rm', [path.join(noBot, 'dist', 'device-bot.mjs')]);
    expect(bundlesFresh(noBot)).toBe(false);
    const noCli = fakeRoot(['launcher/main.ts'], now);
    spawnSync('rm', [path.join(noCli, 'dist', 'meshpilot.cjs')]);
    expect(bundlesFresh(noCli)).toBe(false);
    const noStamp = fakeRoot(['launcher/main.ts'], now);
    spawnSync('rm', [path.join(noStamp, 'dist', 'meshpilot-build.json')]);
    expect(bundlesFresh(noStamp)).toBe(false);
  });

  it('bin/meshpilot.mjs rebuilds dist/ before running when a source changed since the build', () => {
    // Touch (not edit) a source: its content stays, only the build must notice it.
    const main = path.join(PACKAGE_ROOT, 'launcher', 'main.ts');
    const touched = Date.now();
    utimesSync(main, new Date(touched), new Date(touched));
    expect(bundlesFresh()).toBe(false);
    const r = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('0.1.0');
    const stamp = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'dist', 'meshpilot-build.json'), 'utf8')) as { builtFrom: number; inputs: string[] };
    expect(stamp.builtFrom).toBeGreaterThanOrEqual(touched);
    expect(stamp.inputs).toContain('launcher/main.ts');
    expect(stamp.inputs).toContain('bots/device-main.ts');
    // the CLI entry's loader is not an esbuild input, but an edit of it must rebuild too
    expect(stamp.inputs).toContain('scripts/cli-loader.cjs');
  }, 90_000);
});

describe('meshpilot up from the bundle', () => {
  it('runs the launcher and its bot with no esbuild or tsx process and no bundling at start', async () => {
    const env = await createBotEnv({ encryption: 'auto', phoneCrypto: true });
    let launcher: ChildProcess | undefined;
    let out = '';
    try {
      await env.registerBot('lean');
      env.writeManifest('lean', '  sys.info: {}\n');
      launcher = spawn(process.execPath, [BIN, 'up'], {
        env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      launcher.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
      launcher.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
      const botUser = env.botUserId('lean');
      await env.phone.waitFor((e) => e.sender === botUser && /✓ lean live/.test(bodyOf(e)), 60_000)
        .catch((err: unknown) => { throw new Error(`${(err as Error).message}\nlauncher output:\n${out.slice(-3000)}`); });
      for (let i = 0; i < 100 && !/launcher running/.test(out); i++) await new Promise((r) => setTimeout(r, 100));
      expect(out).toMatch(/launcher running/);
      const tree = processTree(launcher.pid!);
      const cmdlines = tree.map((p) => readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').replaceAll('\0', ' '));
      expect(cmdlines.filter((c) => /esbuild|tsx/.test(c))).toEqual([]);
      expect(tree.map((p) => p.name).sort()).toEqual(['device-bot.mjs', 'meshpilot.mjs']);
      expect(out).not.toMatch(/built the device bot bundle/);
    } finally {
      if (launcher && launcher.exitCode === null) launcher.kill('SIGKILL');
      await env.cleanup();
    }
  }, 120_000);
});
