/**
 * `meshpilot up` with Matrix configured runs the HTTP server beside the bots: it prints the URL, the
 * API answers there (bound to loopback), a token from `meshpilot token create` runs a capability on the
 * device whose bot is running, the device's bot state shows in GET /v1/devices/<d>, and SIGTERM stops
 * the server with the bots.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');
let env: BotEnv | undefined;
let launcher: ChildProcess | undefined;

afterAll(async () => {
  if (launcher && launcher.exitCode === null) launcher.kill('SIGKILL');
  await env?.cleanup();
});

describe('meshpilot up serves the API beside the bots', () => {
  it('prints the URL, answers /v1 with a CLI-made token, shows the bot state, stops on SIGTERM', async () => {
    env = await createBotEnv();
    await env.registerBot('webbox');
    env.writeManifest('webbox', '  sys.info: {}\n');
    const childEnv = { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: 'warn', MESHPILOT_HTTP_LISTEN: '127.0.0.1:0' };
    let out = '';
    launcher = spawn(process.execPath, [BIN, 'up'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    launcher.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
    launcher.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
    const botUser = env.botUserId('webbox');
    await env.phone.waitFor((e) => e.sender === botUser && /✓ webbox live/.test(bodyOf(e)), 60_000)
      .catch((err: unknown) => { throw new Error(`${(err as Error).message}\n${out.slice(-3000)}`); });
    for (let i = 0; i < 100 && !/web: dashboard/.test(out); i++) await new Promise((r) => setTimeout(r, 100));
    const url = /web: dashboard (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)?.[1];
    expect(url, out).toBeDefined();

    const made = spawnSync(process.execPath, [BIN, 'token', 'create', 'ops', '--device', 'webbox', '--capability', 'sys.*,devices', '--expires', '1d'], { env: childEnv, encoding: 'utf8', timeout: 60_000 });
    expect(made.status, made.stderr).toBe(0);
    const token = made.stdout.trim();
    const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    // A command derived from its declaration runs in the launcher on its open runtime (which stays open: exec follows).
    const cmd = await fetch(`${url}/v1/commands/devices`, { method: 'POST', headers: auth, body: '{}' });
    const cmdBody = await cmd.json() as { ok: boolean; stdout: string };
    expect([cmd.status, cmdBody.ok], JSON.stringify(cmdBody)).toEqual([200, true]);
    expect(cmdBody.stdout).toMatch(/^webbox +local +linux +1 capabilities\n$/);
    const r = await fetch(`${url}/v1/exec`, { method: 'POST', headers: auth, body: JSON.stringify({ device: 'webbox', capability: 'sys.info' }) });
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({ ok: true, device: 'webbox', decision: 'allowed' });
    const d = await (await fetch(`${url}/v1/devices/webbox`, { headers: auth })).json() as { bot: string; bot_detail: { pid: number } };
    expect(d.bot).toBe('running');
    expect(d.bot_detail.pid).toBeGreaterThan(0);

    const exited = new Promise<number | null>((resolve) => launcher!.once('exit', (code) => resolve(code)));
    launcher.kill('SIGTERM');
    expect(await exited, out.slice(-2000)).toBe(0);
    await expect(fetch(`${url}/v1/health`)).rejects.toThrow();
  }, 120_000);
});
