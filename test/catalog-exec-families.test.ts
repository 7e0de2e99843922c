/**
 * shell, git, docker, svc and pkg capabilities against real processes on this machine
 * (a Debian container: git and dpkg present, a docker client without an engine, no systemd).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { toJsonSchema, type AnyCapability, type CapabilityContext, type CapabilityResult, type Limits } from '../capabilities/capability.js';
import { LocalHost } from '../capabilities/transports/local.js';
import { shellCapabilities } from '../capabilities/catalog/shell.js';
import { gitCapabilities, cloneUrlProblem } from '../capabilities/catalog/git.js';
import { dockerCapabilities } from '../capabilities/catalog/docker.js';
import { svcCapabilities } from '../capabilities/catalog/svc.js';
import { pkgCapabilities } from '../capabilities/catalog/pkg.js';

const ALL = [...shellCapabilities, ...gitCapabilities, ...dockerCapabilities, ...svcCapabilities, ...pkgCapabilities];

function cap(name: string): AnyCapability {
  const found = ALL.find((c) => c.name === name);
  if (!found) throw new Error(`no capability ${name}`);
  return found;
}

function context(limits: Partial<Limits> = {}, host = new LocalHost('local')): CapabilityContext {
  return { host, device: 'local', os: 'linux', limits: { timeoutMs: 20_000, maxOutputBytes: 1 << 20, ...limits } };
}

/** Parses like invoke() does, then runs. */
async function call(name: string, args: Record<string, unknown>, ctx = context()): Promise<CapabilityResult> {
  const def = cap(name);
  return def.run(def.input.parse(args), ctx);
}

function rejects(name: string, args: Record<string, unknown>): boolean {
  return !cap(name).input.safeParse(args).success;
}

/** A message a person can read: says something, and carries no stack trace. */
function expectHumanError(r: CapabilityResult): void {
  expect(r.ok).toBe(false);
  expect(r.error?.message ?? '').not.toBe('');
  expect(r.error?.message).not.toMatch(/\n\s+at /);
  expect(r.error?.message).not.toMatch(/^\s+at /m);
}

let tmp: string;
beforeAll(() => {
  tmp = realpathSync(mkdtempSync(join(tmpdir(), 'mp-exec-')));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const savedPath = process.env['PATH'];
afterEach(() => {
  process.env['PATH'] = savedPath;
});

describe('declarations', () => {
  it('every capability has a strict schema that turns into JSON Schema, a description and a risk', () => {
    expect(ALL.map((c) => c.name).sort()).toEqual([
      'docker.logs', 'docker.ps', 'docker.restart', 'docker.start', 'docker.stop',
      'git.clone', 'git.log', 'git.pull', 'git.status',
      'pkg.install', 'pkg.list', 'pkg.upgrade',
      'shell.eval', 'shell.exec',
      'svc.logs', 'svc.restart', 'svc.status',
    ]);
    for (const c of ALL) {
      expect(c.description.length, c.name).toBeGreaterThan(20);
      const schema = toJsonSchema(c);
      expect(schema['type'], c.name).toBe('object');
      expect(schema['additionalProperties'], c.name).toBe(false);
      expect(rejects(c.name, { unexpected_field: 1 }), c.name).toBe(true);
    }
    expect(cap('shell.eval').risk).toBe('admin');
    expect(cap('shell.eval').scope).toEqual({ kind: 'eval' });
    expect(cap('pkg.install').risk).toBe('admin');
    expect(cap('svc.restart').risk).toBe('write');
    expect(cap('git.clone').scope).toEqual({ kind: 'paths', args: ['dest'] });
  });
});

describe('shell.exec', () => {
  it('passes metacharacters through literally (no shell)', async () => {
    const nasty = ['a;b', '$(id)', '`id`', 'x\ny', "'q' \"d\"", '&& rm -rf /', '|cat', '*'];
    const r = await call('shell.exec', { argv: ['printf', '%s|', ...nasty] });
    expect(r.ok).toBe(true);
    expect(r.stdout).toBe(nasty.map((s) => `${s}|`).join(''));
    const e = await call('shell.exec', { argv: ['echo', '$HOME', '; id'] });
    expect(e.stdout).toBe('$HOME ; id\n');
  });

  it('honours cwd, env and stdin', async () => {
    const r1 = await call('shell.exec', { argv: ['pwd'], cwd: tmp });
    expect(r1.stdout.trim()).toBe(tmp);
    const r2 = await call('shell.exec', { argv: ['printenv', 'MP_TEST_VAR'], env: { MP_TEST_VAR: 'v a;l' } });
    expect(r2.stdout).toBe('v a;l\n');
    const r3 = await call('shell.exec', { argv: ['cat'], stdin: 'from stdin\n$(id)\n' });
    expect(r3.stdout).toBe('from stdin\n$(id)\n');
  });

  it('rejects bad environment names, empty argv and oversized input at the schema', () => {
    expect(rejects('shell.exec', { argv: ['true'], env: { 'BAD-NAME': 'x' } })).toBe(true);
    expect(rejects('shell.exec', { argv: ['true'], env: { '1X': 'x' } })).toBe(true);
    const many = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`V${i}`, 'x']));
    expect(rejects('shell.exec', { argv: ['true'], env: many })).toBe(true);
    expect(rejects('shell.exec', { argv: [] })).toBe(true);
    expect(rejects('shell.exec', { argv: [''] })).toBe(true);
    expect(rejects('shell.exec', { argv: Array(257).fill('x') })).toBe(true);
    expect(rejects('shell.exec', { argv: ['true'], timeout_s: 0 })).toBe(true);
    expect(rejects('shell.exec', { argv: ['true'], timeout_s: 3601 })).toBe(true);
    expect(rejects('shell.exec', { argv: ['true'], env: { OK_NAME: 'x' } })).toBe(false);
  });

  it('reports a non-zero exit as a failure with the exit code', async () => {
    const r = await call('shell.exec', { argv: ['sh', '-c', 'echo oops >&2; exit 3'] });
    expect(r.ok).toBe(false);
    expect(r.exitCode).toBe(3);
    expect(r.error?.code).toBe('exec_failed');
    expect(r.error?.message).toContain('oops');
  });

  it('kills a program that outlives timeout_s', async () => {
    const started = Date.now();
    const r = await call('shell.exec', { argv: ['sleep', '30'], timeout_s: 1 });
    expect(Date.now() - started).toBeLessThan(8000);
    expect(r.ok).toBe(false);
    expect(r.error?.code).toBe('timeout');
  });

  it('never waits longer than the device limit, whatever timeout_s says', async () => {
    const started = Date.now();
    const r = await call('shell.exec', { argv: ['sleep', '30'], timeout_s: 3600 }, context({ timeoutMs: 500 }));
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.error?.code).toBe('timeout');
  });

  it('caps output and says it was truncated', async () => {
    const r = await call('shell.exec', { argv: ['seq', '1', '100000'] }, context({ maxOutputBytes: 1000 }));
    expect(r.truncated).toBe(true);
    expect(Buffer.byteLength(r.stdout)).toBe(1000);
    expect(r.stdout.startsWith('1\n2\n3\n')).toBe(true);
  });

  it('says plainly when the program is not installed', async () => {
    const r = await call('shell.exec', { argv: ['mp-definitely-not-a-binary'] });
    expectHumanError(r);
    expect(r.error?.code).toBe('tool_missing');
    expect(r.error?.message).toBe('mp-definitely-not-a-binary not installed on local');
  });
});

describe('shell.eval', () => {
  it('runs a pipeline through sh', async () => {
    const r = await call('shell.eval', { script: 'printf "a\\nb\\nc\\n" | wc -l | tr -d " "; echo $((2+3))' });
    expect(r.ok).toBe(true);
    expect(r.stdout).toBe('3\n5\n');
  });

  it('runs in cwd and reports failure', async () => {
    const r = await call('shell.eval', { script: 'pwd; exit 7', cwd: tmp });
    expect(r.stdout.trim()).toBe(tmp);
    expect(r.ok).toBe(false);
    expect(r.exitCode).toBe(7);
  });
});

// ---- git --------------------------------------------------------------------------------------------

function g(args: string[], cwd?: string): string {
  return execFileSync('git', ['-c', 'user.name=Test User', '-c', 'user.email=test@example.com', '-c', 'init.defaultBranch=main', ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1' },
  });
}

describe('git', () => {
  let upstream: string;
  let down: string;
  beforeAll(() => {
    upstream = join(tmp, 'upstream');
    mkdirSync(upstream);
    g(['init', '-q', '-b', 'main', upstream]);
    writeFileSync(join(upstream, 'a.txt'), 'one\n');
    g(['-C', upstream, 'add', 'a.txt']);
    g(['-C', upstream, 'commit', '-q', '-m', 'first commit']);
    writeFileSync(join(upstream, 'b.txt'), 'two\n');
    g(['-C', upstream, 'add', 'b.txt']);
    g(['-C', upstream, 'commit', '-q', '-m', 'second: with | pipes "and" quotes']);
    down = join(tmp, 'down');
    g(['clone', '-q', `file://${upstream}`, down]);
  });

  it('git.status lists changes, including names with spaces and renames', async () => {
    writeFileSync(join(down, 'a.txt'), 'changed\n');
    writeFileSync(join(down, 'new file.txt'), 'x\n');
    g(['-C', down, 'mv', 'b.txt', 'c.txt']);
    const r = await call('git.status', { repo: down });
    expect(r.ok).toBe(true);
    const d = r.data as { branch: string; upstream: string; ahead: number; behind: number; changes: { status: string; path: string; from?: string }[] };
    expect(d.branch).toBe('main');
    expect(d.upstream).toBe('origin/main');
    expect(d.changes).toContainEqual({ status: ' M', path: 'a.txt' });
    expect(d.changes).toContainEqual({ status: '??', path: 'new file.txt' });
    expect(d.changes).toContainEqual({ status: 'R ', path: 'c.txt', from: 'b.txt' });
    expect(r.stdout).toMatch(/^on main \(origin\/main\), 3 change/);
    // Put it back for the pull test.
    g(['-C', down, 'mv', 'c.txt', 'b.txt']);
    g(['-C', down, 'checkout', '--', 'a.txt']);
    rmSync(join(down, 'new file.txt'));
  });

  it('git.status fails clearly outside a repository', async () => {
    const notRepo = join(tmp, 'not-a-repo');
    mkdirSync(notRepo);
    const r = await call('git.status', { repo: notRepo });
    expectHumanError(r);
    expect(r.error?.code).toBe('not_found');
    expect(r.error?.message).toBe(`${notRepo} is not a git repository`);
    const missing = await call('git.status', { repo: join(tmp, 'nope') });
    expect(missing.error?.message).toBe(`${join(tmp, 'nope')} does not exist`);
  });

  it('git.log returns structured commits, newest first, limited to n', async () => {
    const r = await call('git.log', { repo: upstream, n: 1 });
    expect(r.ok).toBe(true);
    const commits = r.data as { hash: string; author: string; date: string; subject: string }[];
    expect(commits).toHaveLength(1);
    expect(commits[0]?.subject).toBe('second: with | pipes "and" quotes');
    expect(commits[0]?.author).toBe('Test User');
    expect(commits[0]?.hash).toMatch(/^[0-9a-f]{40}$/);
    expect(commits[0]?.hash).toBe(g(['-C', upstream, 'rev-parse', 'HEAD']).trim());
    expect(Number.isNaN(Date.parse(commits[0]?.date ?? ''))).toBe(false);
    const all = await call('git.log', { repo: upstream });
    expect((all.data as unknown[]).length).toBe(2);
    expect(all.stdout.split('\n')[1]).toMatch(/^[0-9a-f]{7} \d{4}-\d\d-\d\d Test User: first commit$/);
    expect(rejects('git.log', { repo: upstream, n: 501 })).toBe(true);
  });

  it('git.log of a repository without commits is empty, not an error', async () => {
    const empty = join(tmp, 'empty-repo');
    g(['init', '-q', empty]);
    const r = await call('git.log', { repo: empty });
    expect(r.ok).toBe(true);
    expect(r.data).toEqual([]);
  });

  it('git.pull fast-forwards after a new upstream commit, and status sees behind first', async () => {
    writeFileSync(join(upstream, 'c.txt'), 'three\n');
    g(['-C', upstream, 'add', 'c.txt']);
    g(['-C', upstream, 'commit', '-q', '-m', 'third']);
    g(['-C', down, 'fetch', '-q']);
    const st = await call('git.status', { repo: down });
    expect((st.data as { behind: number }).behind).toBe(1);

    const before = g(['-C', down, 'rev-parse', 'HEAD']).trim();
    const r = await call('git.pull', { repo: down, remote: 'origin', branch: 'main' });
    expect(r.ok).toBe(true);
    const d = r.data as { updated: boolean; before: string; after: string };
    expect(d.updated).toBe(true);
    expect(d.before).toBe(before);
    expect(d.after).toBe(g(['-C', upstream, 'rev-parse', 'HEAD']).trim());
    expect(readFileSync(join(down, 'c.txt'), 'utf8')).toBe('three\n');

    const again = await call('git.pull', { repo: down });
    expect(again.ok).toBe(true);
    expect(again.stdout).toBe('already up to date');
  });

  it('git.pull validates names', () => {
    expect(rejects('git.pull', { repo: '/r', remote: '--upload-pack=x' })).toBe(true);
    expect(rejects('git.pull', { repo: '/r', remote: 'origin', branch: '-b' })).toBe(true);
    expect(rejects('git.pull', { repo: '/r', remote: 'origin', branch: 'a..b' })).toBe(true);
    expect(rejects('git.pull', { repo: '/r', branch: 'main' })).toBe(true);
    expect(rejects('git.pull', { repo: '/r', remote: 'origin', branch: 'feature/x-1' })).toBe(false);
  });

  it('git.clone clones a file:// repository, optionally shallow and on a branch', async () => {
    const dest = join(tmp, 'clone1');
    const r = await call('git.clone', { url: `file://${upstream}`, dest });
    expect(r.ok).toBe(true);
    expect(existsSync(join(dest, '.git'))).toBe(true);
    expect(readFileSync(join(dest, 'c.txt'), 'utf8')).toBe('three\n');

    g(['-C', upstream, 'branch', 'side', 'HEAD~1']);
    const shallow = join(tmp, 'clone2');
    const r2 = await call('git.clone', { url: `file://${upstream}`, dest: shallow, branch: 'side', depth: 1 });
    expect(r2.ok).toBe(true);
    expect(g(['-C', shallow, 'rev-list', '--count', 'HEAD']).trim()).toBe('1');
    expect(g(['-C', shallow, 'rev-parse', '--abbrev-ref', 'HEAD']).trim()).toBe('side');

    const fails = await call('git.clone', { url: join(tmp, 'no-such-repo'), dest: join(tmp, 'clone3') });
    expectHumanError(fails);
    expect(fails.error?.message).toMatch(/^git clone failed: /);
  });

  it('git.clone refuses option-looking and ext:: URLs at the schema and in run()', async () => {
    const marker = join(tmp, 'pwned');
    const bad = [`--upload-pack=touch ${marker}`, `ext::sh -c touch% ${marker}`, `EXT::sh -c touch% ${marker}`,
      `https://x/ext::y`, 'fd::3', 'http://example.com/r.git', 'git@-oProxyCommand=x:r', 'ssh://-oProxyCommand=x/r', 'relative/path'];
    for (const url of bad) {
      expect(rejects('git.clone', { url, dest: join(tmp, 'c') }), url).toBe(true);
      const r = await cap('git.clone').run({ url, dest: join(tmp, 'c') }, context());
      expect(r.ok, url).toBe(false);
      expect(r.error?.code, url).toBe('invalid_args');
    }
    expect(existsSync(marker)).toBe(false);
    expect(existsSync(join(tmp, 'c'))).toBe(false);
    for (const url of ['https://github.com/o/r.git', 'ssh://git@example.com:2222/o/r.git', 'git@github.com:o/r.git', 'file:///srv/r', '/srv/r.git']) {
      expect(cloneUrlProblem(url), url).toBeNull();
    }
  });
});

// ---- docker -----------------------------------------------------------------------------------------

describe('docker', () => {
  it('docker.ps without a reachable engine fails with a human message', async () => {
    const r = await call('docker.ps', {});
    expectHumanError(r);
    // This machine has the client and no engine; a machine without the client gets tool_missing.
    expect(r.error?.message).toMatch(/^docker is installed on local but its daemon is not running or not reachable$|^docker not installed on local$/);
  });

  it('docker.ps says "docker not installed" when the client is missing', async () => {
    const empty = join(tmp, 'empty-bin');
    mkdirSync(empty, { recursive: true });
    process.env['PATH'] = empty;
    const r = await call('docker.ps', { all: true });
    expectHumanError(r);
    expect(r.error).toEqual({ code: 'tool_missing', message: 'docker not installed on local' });
  });

  it('validates container names and since', () => {
    expect(rejects('docker.logs', { container: '-f' })).toBe(true);
    expect(rejects('docker.logs', { container: 'web;id' })).toBe(true);
    expect(rejects('docker.restart', { container: '--help' })).toBe(true);
    expect(rejects('docker.logs', { container: 'web', since: 'yesterday' })).toBe(true);
    expect(rejects('docker.logs', { container: 'web', tail: 5001 })).toBe(true);
    expect(rejects('docker.logs', { container: 'web', since: '10m' })).toBe(false);
    expect(rejects('docker.logs', { container: 'web_1.x-y', since: '2024-05-01T12:00:00Z' })).toBe(false);
    expect(cap('docker.stop').scope).toEqual({ kind: 'names', option: 'containers', args: ['container'] });
  });
});

// ---- svc --------------------------------------------------------------------------------------------

const systemdRunning = existsSync('/run/systemd/system');

describe('svc', () => {
  it.skipIf(systemdRunning)('svc.status without systemd says so plainly', async () => {
    const r = await call('svc.status', { service: 'ssh' });
    expectHumanError(r);
    expect(r.error?.code).toBe('tool_missing');
    expect(r.error?.message).toMatch(/^systemd is not running on local/);
  });

  it('svc on a non-Linux device fails before running anything', async () => {
    const ctx = { ...context(), os: 'darwin' as const };
    const r = await call('svc.restart', { service: 'nginx' }, ctx);
    expect(r.error).toEqual({ code: 'tool_missing', message: 'svc.* needs systemd; local runs darwin' });
  });

  it('validates service names', () => {
    expect(rejects('svc.status', { service: '-H' })).toBe(true);
    expect(rejects('svc.restart', { service: 'a;reboot' })).toBe(true);
    expect(rejects('svc.logs', { service: 'nginx', lines: 5001 })).toBe(true);
    expect(rejects('svc.status', { service: 'getty@tty1.service' })).toBe(false);
  });
});

// ---- pkg --------------------------------------------------------------------------------------------

describe('pkg', () => {
  it.skipIf(!existsSync('/usr/bin/dpkg-query'))('pkg.list finds bash through dpkg-query', async () => {
    const r = await call('pkg.list', { filter: 'BASH' });
    expect(r.ok).toBe(true);
    const d = r.data as { manager: string; packages: { name: string; version: string }[] };
    expect(d.manager).toBe('apt');
    const bash = d.packages.find((p) => p.name === 'bash');
    expect(bash?.version).toMatch(/^\d/);
    expect(d.packages.every((p) => p.name.includes('bash'))).toBe(true);
    expect(r.stdout).toMatch(/^bash \d/m);
  });

  /** A fake apt-get first on PATH that logs its argv (one [arg] each) and DEBIAN_FRONTEND. */
  function fakeAptGet(exitCode = 0, stderr = ''): { log: string } {
    const dir = mkdtempSync(join(tmp, 'fake-apt-'));
    const log = join(dir, 'argv.log');
    const script = join(dir, 'apt-get');
    writeFileSync(
      script,
      `#!/bin/sh\n{ for a in "$@"; do printf '[%s]' "$a"; done; printf ' DF=%s\\n' "$DEBIAN_FRONTEND"; } >> '${log}'\n` +
        `case "$1" in --version) exit 0;; esac\n` +
        (stderr ? `printf '%s\\n' '${stderr}' >&2\n` : '') +
        `exit ${exitCode}\n`,
    );
    chmodSync(script, 0o755);
    process.env['PATH'] = `${dir}:${savedPath ?? ''}`;
    return { log };
  }

  it('pkg.install runs apt-get non-interactively with -- before the names', async () => {
    const { log } = fakeAptGet();
    const r = await call('pkg.install', { packages: ['htop', 'curl=7.88.1-10'] }, context({}, new LocalHost('local')));
    expect(r.ok).toBe(true);
    expect(r.data).toEqual({ manager: 'apt', packages: ['htop', 'curl=7.88.1-10'] });
    expect(readFileSync(log, 'utf8')).toBe('[--version] DF=\n[install][-y][--][htop][curl=7.88.1-10] DF=noninteractive\n');
  });

  it('pkg.upgrade refreshes lists and upgrades all, or only the named packages', async () => {
    const { log } = fakeAptGet();
    const host = new LocalHost('local');
    expect((await call('pkg.upgrade', {}, context({}, host))).ok).toBe(true);
    expect((await call('pkg.upgrade', { packages: ['bash'] }, context({}, host))).ok).toBe(true);
    // Detection ran once for this host: the manager is cached per host object.
    expect(readFileSync(log, 'utf8')).toBe(
      '[--version] DF=\n' +
        '[update] DF=noninteractive\n[upgrade][-y] DF=noninteractive\n' +
        '[update] DF=noninteractive\n[install][--only-upgrade][-y][--][bash] DF=noninteractive\n',
    );
  });

  it('pkg.install reports an unknown package clearly', async () => {
    fakeAptGet(100, 'E: Unable to locate package nosuchpkg');
    const r = await call('pkg.install', { packages: ['nosuchpkg'] }, context({}, new LocalHost('local')));
    expectHumanError(r);
    expect(r.exitCode).toBe(100);
    expect(r.error).toEqual({ code: 'not_found', message: 'installing nosuchpkg: E: Unable to locate package nosuchpkg' });
  });

  it('says when no package manager is found', async () => {
    const empty = join(tmp, 'empty-bin2');
    mkdirSync(empty, { recursive: true });
    process.env['PATH'] = empty;
    const r = await call('pkg.list', {}, context({}, new LocalHost('box')));
    expect(r.error).toEqual({ code: 'tool_missing', message: 'no supported package manager (apt, dnf, pacman, apk, brew) found on local' });
  });

  it('validates package names', () => {
    expect(rejects('pkg.install', { packages: ['-oAPT::Update::Pre-Invoke::=id'] })).toBe(true);
    expect(rejects('pkg.install', { packages: ['a b'] })).toBe(true);
    expect(rejects('pkg.install', { packages: ['a;id'] })).toBe(true);
    expect(rejects('pkg.install', { packages: [] })).toBe(true);
    expect(rejects('pkg.install', { packages: Array(51).fill('x') })).toBe(true);
    expect(rejects('pkg.list', { filter: 'x'.repeat(129) })).toBe(true);
    expect(rejects('pkg.install', { packages: ['libstdc++6', 'python3.11', 'foo:amd64', 'bar/bookworm-backports'] })).toBe(false);
    expect(cap('pkg.upgrade').input.parse({})).toEqual({ packages: [] });
  });
});
