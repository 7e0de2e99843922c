import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { tempDir } from './helpers/tmp.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');

function cli(home: string, args: string[], input?: string) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' },
    encoding: 'utf8',
    input: input ?? '',
    timeout: 30_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('meshpilot CLI (real child processes)', { timeout: 120_000 }, () => {
  it('first run creates the data dir and enrolls this machine as `local`', () => {
    const home = path.join(tempDir('mp-cli-'), 'home');
    const r = cli(home, ['devices']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^local\s+local\s+linux\s+\d+ capabilities/m);
    expect(readFileSync(path.join(home, 'manifests', 'local.yaml'), 'utf8')).toMatch(/^device: local$/m);
  });

  it('output that a pipe\'s reader takes late arrives whole (the CLI\'s exit waits for it)', async () => {
    const home = tempDir('mp-cli-');
    // 64 Ki control characters: fs.read returns them all (the manifest's limit), JSON writes each as 6 bytes
    const file = path.join(tempDir('mp-cli-pipe-'), 'ctl.txt');
    writeFileSync(file, '\u0001'.repeat(70_000));
    const child = spawn(process.execPath, [BIN, 'cap', 'local', 'fs.read', `path=${file}`, '--output', 'json'], {
      env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // the reader takes nothing for a while: the pipe fills and the rest of the output waits in the CLI
    child.stdout.pause();
    await new Promise((r) => setTimeout(r, 1500));
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stdout.resume();
    expect(await exited).toBe(0);
    const out = Buffer.concat(chunks).toString('utf8');
    expect(out.length).toBeGreaterThan(6 * 65536);
    const parsed = JSON.parse(out) as { ok: boolean; result: { stdout: string; truncated: boolean } };
    expect(parsed.ok).toBe(true);
    expect(parsed.result.stdout).toBe('\u0001'.repeat(65536));
    expect(parsed.result.truncated).toBe(true);
  });

  it('a reader that goes away early ends the command quietly, exit 0 (EPIPE, no stack trace)', async () => {
    const home = tempDir('mp-cli-');
    const file = path.join(tempDir('mp-cli-pipe-'), 'ctl.txt');
    writeFileSync(file, '\u0001'.repeat(70_000));
    const child = spawn(process.execPath, [BIN, 'cap', 'local', 'fs.read', `path=${file}`, '--output', 'json'], {
      env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // `| head -c 100`: the first bytes, then the reader is gone with ~400 KB still to write
    const first = await new Promise<Buffer>((resolve) => child.stdout.once('data', resolve));
    child.stdout.destroy();
    expect(first.toString('utf8')).toMatch(/^\{\n {2}"device": "local"/);
    expect(await exited).toBe(0);
    expect(err).not.toMatch(/EPIPE|Error|\n\s+at /);
  });

  it('output written before any stream exists and after it is made arrives in order', () => {
    // `cap` prints its result on stdout and the audit footer on stderr, both into one pipe here
    const home = tempDir('mp-cli-');
    const dir = tempDir('mp-cli-order-');
    for (const f of ['a.txt', 'b.txt']) writeFileSync(path.join(dir, f), f);
    const r = spawnSync('sh', ['-c', `"${process.execPath}" "${BIN}" cap local fs.list path=${dir} 2>&1`], {
      env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' }, encoding: 'utf8', timeout: 30_000,
    });
    expect(r.status).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.at(-1)).toMatch(/^🧾 audit local #\d+ fs\.list ok$/);
    expect(lines.slice(0, -1).join('\n')).toMatch(/a\.txt[\s\S]*b\.txt/);
  });

  it('exit codes: 0 ok, 3 denied, 4 failed, 2 usage; the footer names the audit entry', () => {
    const home = tempDir('mp-cli-');
    const ok = cli(home, ['cap', 'local', 'fs.list', 'path=/tmp']);
    expect(ok.code).toBe(0);
    expect(ok.err).toMatch(/🧾 audit local #2 fs.list ok/);

    const denied = cli(home, ['cap', 'local', 'fs.read', 'path=/etc/shadow']);
    expect(denied.code).toBe(3);
    expect(denied.err).toContain('fs.read /etc/shadow denied: matches paths_denied');
    expect(denied.err).not.toMatch(/\n\s+at /); // never a stack trace

    const failed = cli(home, ['cap', 'local', 'fs.read', 'path=/tmp/definitely-not-here-mp']);
    expect(failed.code).toBe(4);

    const unknownDevice = cli(home, ['cap', 'nope', 'sys.info']);
    expect(unknownDevice.code).toBe(2);
    expect(unknownDevice.err).toContain('unknown device nope; known: local');

    const unknownCap = cli(home, ['cap', 'local', 'fs.reed']);
    expect(unknownCap.code).toBe(2);
    expect(unknownCap.err).toMatch(/unknown capability fs.reed; known: .*fs.read/);

    const badArg = cli(home, ['cap', 'local', 'fs.list', 'pth=/tmp']);
    expect(badArg.code).toBe(2);
    expect(badArg.err).toContain('fs.list has no argument "pth"');

    const badValue = cli(home, ['cap', 'local', 'fs.list', 'path=/tmp', 'limit=lots']);
    expect(badValue.code).toBe(2);
    expect(badValue.err).toContain('limit');

    expect(cli(home, ['frobnicate']).code).toBe(2);
  });

  it('parses key=value by schema (numbers, booleans, lists) and --json; --output json', () => {
    const home = tempDir('mp-cli-');
    cli(home, ['devices']);
    const manifest = path.join(home, 'manifests', 'local.yaml');
    writeFileSync(manifest, readFileSync(manifest, 'utf8').replace(/binaries: \[\s*"uptime"/, 'binaries: ["printf", "uptime"'));
    const r = cli(home, ['cap', 'local', 'shell.exec', 'argv=printf,%s-%s,a b;c,$(id)', '--output', 'json']);
    expect(r.code).toBe(0);
    const parsed = JSON.parse(r.out) as { ok: boolean; result: { stdout: string }; audit: { seq: number } };
    expect(parsed.result.stdout).toBe('a b;c-$(id)');
    const list = cli(home, ['cap', 'local', 'fs.list', '--json', '{"path":"/tmp"}', 'limit=1', 'hidden=false', '--output', 'json']);
    expect(list.code).toBe(0);
    expect((JSON.parse(list.out) as { result: { data: { entries: unknown[] } } }).result.data.entries.length).toBeLessThanOrEqual(1);
  });

  it('a call that needs approval is rejected without a TTY unless --yes, and both are audited', () => {
    const home = tempDir('mp-cli-');
    cli(home, ['devices']);
    const manifest = path.join(home, 'manifests', 'local.yaml');
    writeFileSync(manifest, readFileSync(manifest, 'utf8').replace('approval: never', 'approval: always'));
    const rejected = cli(home, ['cap', 'local', 'shell.exec', 'argv=uptime']);
    expect(rejected.code).toBe(3);
    expect(rejected.err).toContain('needs approval: run it in a terminal or pass --yes');
    const approved = cli(home, ['cap', 'local', 'shell.exec', 'argv=uptime', '--yes']);
    expect(approved.code).toBe(0);
    const tail = cli(home, ['audit', 'tail', '--json']);
    const entries = tail.out.trim().split('\n').map((l) => JSON.parse(l) as { decision: string; outcome: string });
    expect(entries.map((e) => `${e.decision}/${e.outcome}`)).toEqual(['rejected/not_run', 'approved/started', 'approved/ok']);
  });

  it('manifest check prints ok or file:line errors with exit 0/1', () => {
    const dir = tempDir('mp-cli-');
    const good = path.join(dir, 'good.yaml');
    const bad = path.join(dir, 'bad.yaml');
    writeFileSync(good, 'device: good\ncapabilities:\n  sys.info: {}\n');
    writeFileSync(bad, 'device: bad\ncapabilities:\n  fs.read: { paths_allowed: ["relative/**"] }\n');
    const g = cli(dir, ['manifest', 'check', good]);
    expect([g.code, g.out]).toEqual([0, 'ok\n']);
    const b = cli(dir, ['manifest', 'check', bad]);
    expect(b.code).toBe(1);
    expect(b.err).toBe('bad.yaml:3 capabilities.fs.read.paths_allowed[0]: must be an absolute path or ~/… (or **/… for "anywhere")\n');
  });

  it('audit verify: ok with head, then the first broken seq after tampering (exit 1)', async () => {
    const home = tempDir('mp-cli-');
    for (let i = 0; i < 3; i++) cli(home, ['cap', 'local', 'sys.health']);
    const ok = cli(home, ['audit', 'verify']);
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/^ok 6 entries head=[0-9a-f]{64}\n$/);
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(path.join(home, 'meshpilot.db'));
    db.prepare("UPDATE audit SET body = replace(body, 'cli:', 'xx:') WHERE seq = 4").run();
    db.close();
    const broken = cli(home, ['audit', 'verify', '--device', 'local']);
    expect(broken.code).toBe(1);
    expect(broken.out).toContain('local: BROKEN at seq 4');
    const tail = cli(home, ['audit', 'tail', '-n', '2']);
    expect(tail.out.trim().split('\n')).toHaveLength(2);
    expect(cli(home, ['audit', 'tail', '-n', 'zero']).code).toBe(2);
  });

  it('agent init writes the agent\'s files (the bundle\'s dynamic import of yaml, a CommonJS package); a bad address is a usage error', () => {
    const home = tempDir('mp-cli-');
    const out = path.join(tempDir('mp-cli-agent-'), 'agent');
    const bad = cli(home, ['agent', 'init', '--device', 'nas', '--address', 'not-an-ip', '--out', out]);
    expect(bad).toMatchObject({ code: 2, err: 'error: --address must be an IP address\n' });
    const r = cli(home, ['agent', 'init', '--device', 'nas', '--address', '10.99.0.7', '--out', out]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(readFileSync(path.join(out, 'agent.yaml'), 'utf8')).toMatch(/^device: nas$/m);
    expect(readFileSync(path.join(out, 'agent.yaml'), 'utf8')).toMatch(/address: 10\.99\.0\.7/);
  });

  it('--help works on every command', () => {
    const home = tempDir('mp-cli-');
    for (const args of [['--help'], ['cap', '--help'], ['audit', 'verify', '--help'], ['manifest', 'check', '--help'], ['devices', '--help']]) {
      const r = cli(home, args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.out).toContain('Usage: meshpilot');
    }
  });
});
