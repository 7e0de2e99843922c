/**
 * The embedded default: `meshpilot up` on a fresh MESHPILOT_HOME with no Matrix config keeps running,
 * serves the dashboard, and prints a one-time login link that logs a browser in (a child process and a
 * headless Chromium, nothing faked). Its tables (logins, approvals, health) exist although the runtime
 * opened the database before the dashboard was loaded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { logIn, startBrowser, type BrowserEnv } from './helpers/dashboard-env.js';

let child: ChildProcess | undefined;
let b: BrowserEnv | undefined;
const home = mkdtempSync(path.join(tmpdir(), 'mp-dash-up-'));

afterAll(async () => {
  await b?.close();
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((r) => child!.once('exit', r));
  }
  rmSync(home, { recursive: true, force: true });
}, 30_000);

describe('npm start without Matrix', () => {
  it('serves the dashboard and prints a login link that works once', async () => {
    child = spawn(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs'), 'up'], {
      env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_HTTP_LISTEN: '127.0.0.1:0', MESHPILOT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    const link = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no login link within 90 s; output:\n${out}`)), 90_000);
      child!.stdout!.on('data', () => {
        const m = /web: log in \(one-time link, 5 min\): (http:\/\/127\.0\.0\.1:\d+\/login\?t=[A-Za-z0-9_-]{43})/.exec(out);
        if (m) { clearTimeout(t); resolve(m[1]!); }
      });
      child!.once('exit', (code) => reject(new Error(`up exited ${code}:\n${out}`)));
    });
    expect(out).toMatch(/web: dashboard http:\/\/127\.0\.0\.1:\d+\//);
    b = await startBrowser();
    await logIn(b.page, link);
    expect(await b.page.textContent('header .who span')).toMatch(/^cli:/);
    expect(await b.page.textContent('#dev-local')).toContain('local');
    await b.page.goto(new URL('/devices/local', link).href);
    expect(await b.page.textContent('#approvals')).toContain('Nothing waits for approval');
    const again = await fetch(new URL('/login', link), { method: 'POST', body: new URLSearchParams({ t: new URL(link).searchParams.get('t')! }), redirect: 'manual' });
    expect(again.status).toBe(401);
  }, 150_000);
});
