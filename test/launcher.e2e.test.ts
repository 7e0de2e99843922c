/**
 * `meshpilot up` as a real process: the supervisor forks one real device bot per manifest; a bot
 * killed with SIGKILL is restarted and answers; a device added while running gets its bot, which
 * DMs the operator; SIGTERM stops everything gracefully.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

let env: BotEnv;
let launcher: ChildProcess;
let out = '';

function waitOut(re: RegExp, ms = 30_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const m = re.exec(out);
      if (m) { clearInterval(iv); clearTimeout(t); resolve(m); return true; }
      return false;
    };
    const iv = setInterval(check, 100);
    const t = setTimeout(() => { clearInterval(iv); reject(new Error(`launcher did not print ${re} within ${ms} ms; output:\n${out}`)); }, ms);
    check();
  });
}

const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };

beforeAll(async () => {
  env = await createBotEnv();
  await env.registerBot('alpha');
  env.writeManifest('alpha', '  sys.info: {}\n  sys.health: {}\n');
  launcher = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs'), 'up'], {
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  launcher.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  launcher.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  await waitOut(/bot alpha: running \(pid \d+\)/);
}, 60_000);

afterAll(async () => {
  if (launcher && launcher.exitCode === null) launcher.kill('SIGKILL');
  await env?.cleanup();
});

describe('meshpilot up', () => {
  it('runs a bot per device that DMs the operator', async () => {
    const live = await env.phone.waitFor((e) => /✓ alpha live/.test(bodyOf(e)));
    expect(live.sender).toBe(env.botUserId('alpha'));
    // printed once the operator room is up too, which can come after a bot's first DM
    expect((await waitOut(/launcher running \(pid (\d+)\)/))[1]).toBe(String(launcher.pid));
  });

  it('a bot killed with SIGKILL is restarted and answers', async () => {
    const pid = Number(/bot alpha: running \(pid (\d+)\)/.exec(out)?.[1]);
    process.kill(pid, 'SIGKILL');
    await waitOut(/bot alpha: running[\s\S]*bot alpha: running \(pid \d+\)/, 40_000);
    const pids = [...out.matchAll(/bot alpha: running \(pid (\d+)\)/g)].map((m) => Number(m[1]));
    const newPid = pids[pids.length - 1]!;
    expect(pids).toHaveLength(2);
    expect(newPid).not.toBe(pid);
    expect(alive(newPid)).toBe(true);
    const live = await env.phone.waitFor((e) => /✓ alpha live/.test(bodyOf(e)));
    const idx = env.phone.events.length;
    await env.phone.client.sendTextMessage(live.room_id, '!status');
    await env.phone.waitFor((e) => env.phone.events.indexOf(e) >= idx && /🖥 alpha/.test(bodyOf(e)), 20_000);
  }, 60_000);

  it('a device added while running gets its bot, which DMs the operator', async () => {
    await env.registerBot('beta');
    env.writeManifest('beta', '  sys.info: {}\n');
    await waitOut(/bot beta: running/, 30_000);
    const live = await env.phone.waitFor((e) => /✓ beta live/.test(bodyOf(e)), 20_000);
    expect(live.sender).toBe(env.botUserId('beta'));
  }, 60_000);

  it('SIGTERM stops the bots gracefully and removes the pid file', async () => {
    const pids = [...out.matchAll(/running \(pid (\d+)\)/g)].map((m) => Number(m[1]));
    const exited = new Promise<number | null>((r) => launcher.once('exit', (code) => r(code)));
    const t0 = Date.now();
    launcher.kill('SIGTERM');
    expect(await exited, out.slice(-4000)).toBe(0);
    // Idle bots stop at once; nothing should wait for the kill timeouts.
    expect(Date.now() - t0, out.slice(-4000)).toBeLessThan(10_000);
    expect(out).toContain('stopped');
    for (const pid of pids) expect(alive(pid)).toBe(false);
    const { existsSync } = await import('node:fs');
    expect(existsSync(path.join(env.home, 'launcher.pid'))).toBe(false);
  }, 40_000);
});
