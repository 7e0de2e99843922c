import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { builtinRegistry } from '../capabilities/registry.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { childEnv } from '../launcher/bot-child.js';
import { pidFilePath, readPidFile, removePidFile, writePidFile } from '../launcher/pid-file.js';
import { Supervisor } from '../launcher/supervisor.js';
import type { BotStatus, SupervisorEvents, SupervisorOptions, SupervisorSettings } from '../launcher/supervisor-types.js';
import { makeTempDir } from './helpers/tmp.js';

const ENTRY = path.join(PACKAGE_ROOT, 'test', 'fixtures', 'dummy-bot.ts');
const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');
const silent = pino({ level: 'silent' });

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function manifestText(device: string, extra = ''): string {
  return `device: ${device}\ncapabilities:\n  sys.info: {}\n${extra}`;
}

function makeHome(devices: string[], modes: Record<string, string> = {}): string {
  const t = makeTempDir('mp-sup-');
  cleanups.push(() => t.cleanup());
  mkdirSync(path.join(t.dir, 'manifests'));
  mkdirSync(path.join(t.dir, 'dummy'));
  for (const d of devices) writeFileSync(path.join(t.dir, 'manifests', `${d}.yaml`), manifestText(d));
  for (const [d, m] of Object.entries(modes)) setMode(t.dir, d, m);
  return t.dir;
}

function setMode(home: string, device: string, mode: string): void {
  writeFileSync(path.join(home, 'dummy', `${device}.mode`), mode);
}

function dummyFile(home: string, device: string, ext: string): string {
  return path.join(home, 'dummy', `${device}.${ext}`);
}

function starts(home: string, device: string): number {
  try {
    return readFileSync(dummyFile(home, device, 'starts'), 'utf8').split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function makeSupervisor(home: string, settings: Partial<SupervisorSettings> = {}, extra: Partial<SupervisorOptions> = {}): Supervisor {
  const registry = new DeviceRegistry(path.join(home, 'manifests'), builtinRegistry());
  const sup = new Supervisor({
    entry: ENTRY,
    home,
    desiredDevices: () => registry.list().filter((l) => l.manifest).map((l) => l.device),
    manifestHash: (d) => registry.get(d)?.hash,
    settings: { maxCrashes: 5, crashWindowS: 60, backoffMaxS: 1, backoffBaseMs: 100, heartbeatTimeoutMs: 4000, killGraceMs: 1000, shutdownGraceMs: 3000, ...settings },
    logger: silent,
    forwardOutput: false,
    ...extra,
  });
  cleanups.push(async () => {
    const pids = sup.status().map((s) => s.pid).filter((p): p is number => p !== null);
    await sup.stop();
    for (const p of pids) if (alive(p)) process.kill(p, 'SIGKILL');
  });
  return sup;
}

async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function bot(sup: Supervisor, device: string): BotStatus | undefined {
  return sup.status().find((s) => s.device === device);
}

function runningPid(sup: Supervisor, device: string, not?: number): number | undefined {
  const s = bot(sup, device);
  return s && s.state === 'running' && s.pid !== null && s.pid !== not ? s.pid : undefined;
}

function once<K extends keyof SupervisorEvents>(sup: Supervisor, event: K, device: string): Promise<SupervisorEvents[K][0]> {
  return new Promise((resolve) => {
    const handler = (...args: SupervisorEvents[K]): void => {
      const e = args[0] as { device?: string };
      if (e.device === device) {
        sup.off(event, handler as never);
        resolve(args[0]);
      }
    };
    sup.on(event, handler as never);
  });
}

describe('Supervisor (real child processes)', () => {
  it('runs one bot per device; a killed bot is restarted alone; restart() is graceful; children get a scrubbed env', async () => {
    const home = makeHome(['a', 'b', 'c']);
    process.env['MP_TEST_LAUNCHER_SECRET'] = 'must-not-reach-children';
    cleanups.push(() => { delete process.env['MP_TEST_LAUNCHER_SECRET']; });
    const sup = makeSupervisor(home, {}, { env: { MP_PASSED_ON_PURPOSE: 'yes' } });
    await sup.start();
    const pids = await waitFor('three running bots', () => {
      const p = ['a', 'b', 'c'].map((d) => runningPid(sup, d));
      return p.every((x) => x !== undefined) ? (p as number[]) : undefined;
    });
    expect(new Set(pids).size).toBe(3);
    expect(pids.map((_, i) => Number(readFileSync(dummyFile(home, ['a', 'b', 'c'][i]!, 'pid'), 'utf8')))).toEqual(pids);
    const [pa, pb, pc] = pids as [number, number, number];

    // The protocol: init first, with the device name; heartbeats carry the audit head.
    const firstMsg = JSON.parse(readFileSync(dummyFile(home, 'a', 'log'), 'utf8').split('\n')[0]!);
    expect(firstMsg).toEqual({ type: 'init', device: 'a', heartbeatMs: 1000 });
    await waitFor('an audit head from a', () => bot(sup, 'a')?.auditHead?.seq === 7);
    expect(bot(sup, 'a')?.auditHead?.hash).toBe('ab'.repeat(32));

    // Scrubbed env: the launcher's own variables stay home; settings.env is passed on.
    const env = JSON.parse(readFileSync(dummyFile(home, 'a', 'env'), 'utf8')) as Record<string, string>;
    expect(env['MESHPILOT_HOME']).toBe(home);
    expect(env['MP_PASSED_ON_PURPOSE']).toBe('yes');
    expect(env['MP_TEST_LAUNCHER_SECRET']).toBeUndefined();
    expect(env['NODE_OPTIONS']).toBeUndefined();
    expect(env['PATH']).toBe(process.env['PATH']);
    expect(childEnv('/h', {}, { PATH: '/bin', SECRET_TOKEN: 'x', ANTHROPIC_API_KEY: 'k' })).toEqual({ PATH: '/bin', MESHPILOT_HOME: '/h' });

    process.kill(pb, 'SIGKILL');
    const pb2 = await waitFor('b restarted', () => runningPid(sup, 'b', pb));
    expect(alive(pb)).toBe(false);
    const b = bot(sup, 'b')!;
    expect(b.restarts).toBe(1);
    expect(b.crashesInWindow).toBe(1);
    expect(b.lastExit).toMatchObject({ pid: pb, signal: 'SIGKILL', reason: 'crash' });
    expect(runningPid(sup, 'a')).toBe(pa);
    expect(runningPid(sup, 'c')).toBe(pc);
    expect(bot(sup, 'a')?.restarts).toBe(0);
    expect(bot(sup, 'c')?.restarts).toBe(0);

    // restart(): the old child gets 'shutdown', finishes its call, a new one comes up.
    await sup.restart('c');
    expect(readFileSync(dummyFile(home, 'c', 'done'), 'utf8').trim()).toBe(String(pc));
    const pc2 = await waitFor('c back', () => runningPid(sup, 'c', pc));
    expect(bot(sup, 'c')?.lastExit).toMatchObject({ pid: pc, code: 0, reason: 'restart' });
    expect(bot(sup, 'c')?.crashesInWindow).toBe(0);
    expect(runningPid(sup, 'a')).toBe(pa);
    expect(runningPid(sup, 'b')).toBe(pb2);

    await sup.stop();
    for (const p of [pa, pb2, pc2]) expect(alive(p)).toBe(false);
    expect(sup.status().map((s) => s.state)).toEqual(['stopped', 'stopped', 'stopped']);
  });

  it('crash-on-start: backoff grows up to the cap, then crash-looping with the stderr tail; reload retries it', async () => {
    const home = makeHome(['x'], { x: 'crash-on-start' });
    const sup = makeSupervisor(home, { maxCrashes: 5, crashWindowS: 60, backoffBaseMs: 100, backoffMaxS: 1 });
    const delays: number[] = [];
    sup.on('restart-scheduled', (e) => { if (e.device === 'x') delays.push(e.delayMs); });
    const loop = once(sup, 'crash-loop', 'x');
    await sup.start();
    const ev = await loop;
    expect(ev.code).toBe(3);
    expect(ev.reason).toBe('crash');
    expect(ev.crashesInWindow).toBe(6);
    expect(ev.stderrTail.some((l) => /dummy x: boom on start/.test(l))).toBe(true);
    expect(delays).toHaveLength(5);
    // Equal jitter: the n-th delay lies in [d/2, d] with d = 100·2^(n-1), then capped at 1000.
    [100, 200, 400, 800, 1600].forEach((d, i) => {
      expect(delays[i]).toBeGreaterThanOrEqual(d / 2);
      expect(delays[i]).toBeLessThanOrEqual(Math.min(d, 1000));
    });
    for (let i = 1; i < delays.length; i++) expect(delays[i]).toBeGreaterThanOrEqual(delays[i - 1]!);
    expect(bot(sup, 'x')).toMatchObject({ state: 'crash-looping', pid: null, crashesInWindow: 6, restarts: 5 });
    expect(starts(home, 'x')).toBe(6);
    await new Promise((r) => setTimeout(r, 1200));
    expect(starts(home, 'x')).toBe(6); // no more restarts

    await sup.reconcile(); // a plain reconcile leaves it alone
    expect(bot(sup, 'x')?.state).toBe('crash-looping');
    setMode(home, 'x', 'ok');
    await sup.reconcile({ retryFailed: true });
    await waitFor('x running after retry', () => runningPid(sup, 'x'));
    expect(bot(sup, 'x')?.crashesInWindow).toBe(0);
  });

  it('fatal → failed and not restarted; a manifest change or reload retries it', async () => {
    const home = makeHome(['f'], { f: 'fatal' });
    const sup = makeSupervisor(home, { backoffBaseMs: 50 });
    const failed = once(sup, 'failed', 'f');
    await sup.start();
    expect(await failed).toEqual({ device: 'f', code: 'config', message: 'no Matrix token for f' });
    await waitFor('f exited', () => bot(sup, 'f')?.pid === null);
    await new Promise((r) => setTimeout(r, 800));
    expect(starts(home, 'f')).toBe(1);
    expect(bot(sup, 'f')).toMatchObject({ state: 'failed', crashesInWindow: 0, fatal: { code: 'config' } });
    expect(bot(sup, 'f')?.lastExit).toMatchObject({ code: 78, reason: 'fatal' });
    await sup.reconcile();
    expect(starts(home, 'f')).toBe(1);

    // A manifest change is a config change: it gets another try (still fatal here).
    const failedAgain = once(sup, 'failed', 'f');
    writeFileSync(path.join(home, 'manifests', 'f.yaml'), manifestText('f', '# edited\n'));
    await sup.reconcile();
    await failedAgain;
    expect(starts(home, 'f')).toBe(2);

    setMode(home, 'f', 'ok');
    await sup.reconcile({ retryFailed: true });
    await waitFor('f running', () => runningPid(sup, 'f'));
    expect(bot(sup, 'f')?.fatal).toBeNull();
  });

  it('follows the manifests directory: added → started, removed → stopped, changed → only that one restarted', async () => {
    const home = makeHome(['a', 'b']);
    // A long periodic interval: what happens here comes from fs.watch.
    const sup = makeSupervisor(home, { reconcileIntervalMs: 60_000, watchDebounceMs: 100 });
    await sup.start();
    const pa = await waitFor('a', () => runningPid(sup, 'a'));
    const pb = await waitFor('b', () => runningPid(sup, 'b'));

    writeFileSync(path.join(home, 'manifests', 'c.yaml'), manifestText('c'));
    writeFileSync(path.join(home, 'manifests', 'bad.yaml'), 'device: bad\ncapabilities:\n  no.such.capability: {}\n');
    const pc = await waitFor('c started', () => runningPid(sup, 'c'));
    expect(runningPid(sup, 'a')).toBe(pa);
    expect(runningPid(sup, 'b')).toBe(pb);
    expect(bot(sup, 'bad')).toBeUndefined(); // invalid manifest: no bot

    rmSync(path.join(home, 'manifests', 'b.yaml'));
    await waitFor('b gone', () => bot(sup, 'b') === undefined);
    expect(alive(pb)).toBe(false);
    expect(readFileSync(dummyFile(home, 'b', 'log'), 'utf8')).toContain('{"type":"shutdown"}');
    expect(existsSync(dummyFile(home, 'b', 'done'))).toBe(true);

    writeFileSync(path.join(home, 'manifests', 'a.yaml'), manifestText('a', 'operators: []\n'));
    const pa2 = await waitFor('a restarted', () => runningPid(sup, 'a', pa));
    expect(alive(pa)).toBe(false);
    expect(bot(sup, 'a')?.lastExit?.reason).toBe('restart');
    expect(runningPid(sup, 'c')).toBe(pc);
    expect(bot(sup, 'c')?.restarts).toBe(0);
    expect(pa2).not.toBe(pa);
  });

  it('the periodic reconcile picks up a new manifest without fs.watch', async () => {
    const home = makeHome(['a']);
    const sup = makeSupervisor(home, { reconcileIntervalMs: 300 }, { watch: false });
    await sup.start();
    await waitFor('a', () => runningPid(sup, 'a'));
    writeFileSync(path.join(home, 'manifests', 'd.yaml'), manifestText('d'));
    await waitFor('d started by the periodic reconcile', () => runningPid(sup, 'd'));
  });

  it('graceful stop waits for the in-flight call, escalates to SIGKILL for a stubborn bot, leaves no children', async () => {
    const home = makeHome(['a', 's'], { s: 'slow-shutdown' });
    const sup = makeSupervisor(home, { shutdownGraceMs: 1500, killGraceMs: 500 });
    await sup.start();
    const pa = await waitFor('a', () => runningPid(sup, 'a'));
    const ps = await waitFor('s', () => runningPid(sup, 's'));
    const t0 = Date.now();
    await sup.stop();
    const took = Date.now() - t0;
    expect(readFileSync(dummyFile(home, 'a', 'done'), 'utf8').trim()).toBe(String(pa));
    expect(existsSync(dummyFile(home, 's', 'done'))).toBe(false);
    expect(readFileSync(dummyFile(home, 's', 'log'), 'utf8')).toContain('SIGTERM ignored');
    expect(took).toBeGreaterThanOrEqual(2000 - 50); // grace 1500 + SIGTERM→SIGKILL 500
    expect(took).toBeLessThan(6000);
    expect(alive(pa)).toBe(false);
    expect(alive(ps)).toBe(false);
    expect(bot(sup, 'a')?.lastExit).toMatchObject({ code: 0, reason: 'stop' });
    expect(bot(sup, 's')?.lastExit).toMatchObject({ signal: 'SIGKILL', reason: 'stop' });
    expect(sup.status().every((s) => s.state === 'stopped' && s.pid === null)).toBe(true);
  });

  it('a bot that never sends ready is killed and counted as a crash', async () => {
    const home = makeHome(['n'], { n: 'no-ready' });
    // 3 s: long enough for each child to start node and record its start on a loaded 2-core machine (at
    // 1.5 s CI once killed the second child before it got that far).
    const sup = makeSupervisor(home, { readyTimeoutMs: 3000, killGraceMs: 500, maxCrashes: 1, backoffBaseMs: 50 });
    const loop = once(sup, 'crash-loop', 'n');
    await sup.start();
    const first = await waitFor('first child', () => bot(sup, 'n')?.pid ?? undefined);
    const ev = await loop;
    expect(ev.reason).toBe('ready-timeout');
    expect(ev.signal).toBe('SIGTERM');
    expect(ev.crashesInWindow).toBe(2);
    expect(alive(first)).toBe(false);
    expect(starts(home, 'n')).toBe(2);
    expect(bot(sup, 'n')).toMatchObject({ state: 'crash-looping', restarts: 1 });
  });

  it('a bot whose heartbeats stop is killed and restarted', async () => {
    const home = makeHome(['h'], { h: 'hang' });
    const sup = makeSupervisor(home, { heartbeatTimeoutMs: 800, killGraceMs: 300, backoffBaseMs: 50 });
    await sup.start();
    const p1 = await waitFor('h running', () => runningPid(sup, 'h'));
    const exit = await once(sup, 'exit', 'h');
    expect(exit).toMatchObject({ pid: p1, reason: 'heartbeat-timeout', expected: false });
    await waitFor('h restarted', () => runningPid(sup, 'h', p1));
    expect(bot(sup, 'h')?.crashesInWindow).toBe(1);
  });

  it('SIGHUP (handleSighup) retries failed bots; stop() removes the handler', async () => {
    const home = makeHome(['f'], { f: 'fatal' });
    const before = process.listenerCount('SIGHUP');
    const sup = makeSupervisor(home, {}, { handleSighup: true });
    const failed = once(sup, 'failed', 'f');
    await sup.start();
    await failed;
    expect(process.listenerCount('SIGHUP')).toBe(before + 1);
    setMode(home, 'f', 'ok');
    process.kill(process.pid, 'SIGHUP');
    await waitFor('f running after SIGHUP', () => runningPid(sup, 'f'));
    await sup.stop();
    expect(process.listenerCount('SIGHUP')).toBe(before);
  });
});

describe('launcher pid file and `meshpilot reload`', () => {
  function cli(home: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' } });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      child.on('close', (code) => resolve({ code, out, err }));
    });
  }

  function sighupRecorder(marker: string): Promise<ChildProcess> {
    const script = `process.on('SIGHUP', () => require('fs').appendFileSync(${JSON.stringify(marker)}, 'HUP\\n'));`
      + `process.stdout.write('ready\\n'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    return new Promise((resolve) => child.stdout.once('data', () => resolve(child)));
  }

  it('reload without a launcher says so, and does not create the data dir', async () => {
    const t = makeTempDir('mp-reload-');
    cleanups.push(() => t.cleanup());
    const home = path.join(t.dir, 'home');
    const r = await cli(home, ['reload']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('no launcher is running');
    expect(r.err).toContain(path.join(home, 'launcher.pid'));
    expect(r.err).not.toMatch(/\n\s+at /);
    expect(existsSync(home)).toBe(false);

    // A stale pid file (its process is gone).
    const dead = spawn(process.execPath, ['-e', '0']);
    await new Promise((r2) => dead.on('exit', r2));
    mkdirSync(home);
    writeFileSync(pidFilePath(home), `${dead.pid}\n`);
    const stale = await cli(home, ['reload']);
    expect(stale.code).toBe(1);
    expect(stale.err).toContain(`names pid ${dead.pid}, which is gone`);
  });

  it('reload sends SIGHUP to the live launcher named in the pid file', async () => {
    const t = makeTempDir('mp-reload-');
    cleanups.push(() => t.cleanup());
    const marker = path.join(t.dir, 'hup');
    const launcher = await sighupRecorder(marker);
    writePidFile(t.dir, launcher.pid!);
    expect(readPidFile(t.dir)).toEqual({ pid: launcher.pid, file: pidFilePath(t.dir), alive: true });
    const r = await cli(t.dir, ['reload']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`reload sent to the launcher (pid ${launcher.pid})`);
    await waitFor('SIGHUP recorded', () => existsSync(marker) && readFileSync(marker, 'utf8') === 'HUP\n', 5000);
    expect(launcher.exitCode).toBeNull(); // it handled SIGHUP, it was not killed by it
  });

  it('pid file: refuses a second live launcher, detects a reused pid, removes only its own', async () => {
    const t = makeTempDir('mp-pid-');
    cleanups.push(() => t.cleanup());
    const other = await sighupRecorder(path.join(t.dir, 'unused'));
    writePidFile(t.dir, other.pid!);
    expect(() => writePidFile(t.dir)).toThrow(/another launcher is already running \(pid \d+/);
    removePidFile(t.dir); // not ours: stays
    expect(readPidFile(t.dir)?.pid).toBe(other.pid);

    // Same pid, different start time: a reused pid, not our launcher.
    writeFileSync(pidFilePath(t.dir), `${other.pid}\nstart=1\n`);
    expect(readPidFile(t.dir)?.alive).toBe(process.platform === 'linux' ? false : true);

    writePidFile(t.dir); // the stale one is replaced
    expect(readPidFile(t.dir)).toMatchObject({ pid: process.pid, alive: true });
    removePidFile(t.dir);
    expect(existsSync(pidFilePath(t.dir))).toBe(false);
    writeFileSync(pidFilePath(t.dir), 'garbage');
    expect(readPidFile(t.dir)).toBeUndefined();
  });
});
