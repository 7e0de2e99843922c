import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { decide, needsApproval, normalisePath, precheck, type PathResolver } from '../capabilities/policy.js';
import { builtinRegistry } from '../capabilities/registry.js';
import { LocalHost } from '../capabilities/transports/local.js';
import { hostResolver } from '../capabilities/transports/index.js';
import { makeTempDir } from './helpers/tmp.js';

const registry = builtinRegistry();
const def = (name: string) => {
  const d = registry.get(name);
  if (!d) throw new Error(`no ${name}`);
  return d;
};

function manifest(yaml: string): Manifest {
  const r = parseManifest(yaml, 'test.yaml');
  if (!r.ok) throw new Error(r.issues.map((i) => `${i.line} ${i.field}: ${i.message}`).join('\n'));
  return r.manifest;
}

let root: string;
let cleanup: () => void;
let resolver: PathResolver;
let m: Manifest;

beforeAll(async () => {
  ({ dir: root, cleanup } = makeTempDir('mp-policy-'));
  // root/allowed (allowed), root/allowed/secret (denied), root/outside (not allowed)
  mkdirSync(path.join(root, 'allowed', 'sub'), { recursive: true });
  mkdirSync(path.join(root, 'allowed', 'secret'), { recursive: true });
  mkdirSync(path.join(root, 'outside'), { recursive: true });
  writeFileSync(path.join(root, 'allowed', 'ok.txt'), 'ok');
  writeFileSync(path.join(root, 'allowed', 'secret', 'key.txt'), 'k');
  writeFileSync(path.join(root, 'outside', 'shadow'), 'x');
  symlinkSync(path.join(root, 'outside', 'shadow'), path.join(root, 'allowed', 'file-link'));
  symlinkSync(path.join(root, 'outside'), path.join(root, 'allowed', 'dir-link'));
  symlinkSync(path.join(root, 'allowed', 'ok.txt'), path.join(root, 'allowed', 'inside-link'));
  resolver = { ...(await hostResolver(new LocalHost('t'), 'linux')), home: path.join(root, 'allowed') };
  m = manifest(`
device: t
capabilities:
  fs.read: { paths_allowed: ["${root}/allowed/**"], paths_denied: ["${root}/allowed/secret/**"] }
  fs.write: { paths_allowed: ["~/**"], approval: never }
  fs.delete: { paths_allowed: ["~/**"] }
  shell.exec: { binaries: ["echo", "/usr/bin/printf"], env_allowed: ["FOO"], paths_allowed: ["${root}/allowed/**"] }
  docker.restart: { containers: ["web-*"] }
  pkg.install: {}
  sys.info: {}
`);
});
afterAll(() => cleanup());

describe('paths', () => {
  it('allows a file under paths_allowed and returns the normalised path', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}//allowed/./sub/../ok.txt` }, resolver);
    expect(v).toMatchObject({ kind: 'allow', args: { path: `${root}/allowed/ok.txt` } });
  });

  it('denies .. traversal out of the allowed root, with a reason naming the rule', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}/allowed/../outside/shadow` }, resolver);
    expect(v.kind).toBe('deny');
    if (v.kind === 'deny') expect(v.reason).toBe(`fs.read ${root}/allowed/../outside/shadow denied: not under paths_allowed [${root}/allowed/**]`);
  });

  it('denies a file symlink that escapes the allowed root', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}/allowed/file-link` }, resolver);
    expect(v.kind).toBe('deny');
    if (v.kind === 'deny') expect(v.reason).toContain(`resolves to ${root}/outside/shadow`);
  });

  it('denies a path through a directory symlink that escapes, even for a file that does not exist yet', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}/allowed/dir-link/shadow` }, resolver);
    expect(v.kind).toBe('deny');
    const w = await decide(m, def('fs.write'), { path: '~/dir-link/new-file.txt', content: 'x' }, resolver);
    expect(w.kind).toBe('deny');
    if (w.kind === 'deny') expect(w.reason).toContain(`resolves to ${root}/outside/new-file.txt`);
  });

  it('allows a symlink that stays inside the allowed root', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}/allowed/inside-link` }, resolver);
    expect(v.kind).toBe('allow');
  });

  it('paths_denied wins over paths_allowed', async () => {
    const v = await decide(m, def('fs.read'), { path: `${root}/allowed/secret/key.txt` }, resolver);
    expect(v.kind).toBe('deny');
    if (v.kind === 'deny') expect(v.reason).toContain('matches paths_denied');
  });

  it('expands ~ to the device home and rejects relative paths and NUL bytes', async () => {
    const ok = await decide(m, def('fs.write'), { path: '~/sub/new.txt', content: 'x' }, resolver);
    expect(ok).toMatchObject({ kind: 'allow', args: { path: `${root}/allowed/sub/new.txt` } });
    const rel = await decide(m, def('fs.read'), { path: 'allowed/ok.txt' }, resolver);
    expect(rel.kind).toBe('deny');
    if (rel.kind === 'deny') expect(rel.reason).toContain('must be an absolute path or ~/');
    expect(normalisePath('/etc/pass\0wd', 'linux', '/root')).toEqual({ ok: false, reason: 'contains a NUL byte' });
  });

  it('denies a capability the manifest does not list', async () => {
    const v = await decide(m, def('fs.list'), { path: `${root}/allowed` }, resolver);
    expect(v).toEqual({ kind: 'deny', reason: 'fs.list is not enabled on t (not listed in its manifest)' });
  });
});

describe('windows path tricks', () => {
  const home = 'C:\\Users\\op';
  it('normalises case and separators', () => {
    expect(normalisePath('C:\\Users\\OP\\Docs\\..\\a.txt', 'windows', home)).toEqual({ ok: true, path: 'c:/users/op/a.txt' });
    expect(normalisePath('~/Desktop', 'windows', home)).toEqual({ ok: true, path: 'c:/users/op/desktop' });
  });
  it.each([
    ['\\\\?\\C:\\Windows\\System32', 'UNC'],
    ['\\\\server\\share\\x', 'UNC'],
    ['C:\\Users\\op\\file.txt:secret', 'alternate data streams'],
    ['C:\\Users\\op\\secret.txt.', 'ends with a dot or space'],
    ['C:\\Users\\op\\NUL', 'reserved device name'],
    ['C:\\PROGRA~1\\x', '8.3 short name'],
    ['Users\\op', 'absolute'],
  ])('rejects %s', (p, why) => {
    const r = normalisePath(p, 'windows', home);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toContain(why);
  });
  it('matches patterns case-insensitively', async () => {
    const wm = manifest('device: w\nos: windows\ncapabilities:\n  fs.read: { paths_allowed: ["~/Documents/**"], paths_denied: ["~/Documents/Private/**"] }\n');
    const winResolver: PathResolver = { os: 'windows', home, realpath: async () => null };
    expect((await decide(wm, def('fs.read'), { path: 'c:/USERS/op/documents/a.txt' }, winResolver)).kind).toBe('allow');
    expect((await decide(wm, def('fs.read'), { path: 'C:\\Users\\op\\DOCUMENTS\\private\\x.txt' }, winResolver)).kind).toBe('deny');
    expect((await decide(wm, def('fs.read'), { path: 'C:/Users/op/Documents/../AppData/x' }, winResolver)).kind).toBe('deny');
  });
});

describe('binaries, env and names', () => {
  it('allows only listed binaries, by exact name or exact absolute path', async () => {
    expect((await decide(m, def('shell.exec'), { argv: ['echo', 'hi'] }, resolver)).kind).toBe('approval');
    expect((await decide(m, def('shell.exec'), { argv: ['/usr/bin/printf', 'x'] }, resolver)).kind).toBe('approval');
    for (const bin of ['rm', '/bin/echo', './echo', 'echo;rm', 'ECHO']) {
      const v = await decide(m, def('shell.exec'), { argv: [bin] }, resolver);
      expect(v.kind, bin).toBe('deny');
    }
  });

  it('keeps argv injection attempts as literal arguments (nothing to re-parse)', async () => {
    const argv = ['echo', 'a; rm -rf /', '$(id)', '`id`', 'x\nrm -rf /'];
    const v = await decide(m, def('shell.exec'), { argv }, resolver);
    expect(v.kind).toBe('approval');
    if (v.kind === 'approval') expect(v.args['argv']).toEqual(argv);
    const r = await def('shell.exec').run({ argv }, { host: new LocalHost('t'), device: 't', os: 'linux', limits: { timeoutMs: 5000, maxOutputBytes: 4096 } });
    expect(r.stdout).toBe('a; rm -rf / $(id) `id` x\nrm -rf /\n');
  });

  it('denies env keys not in env_allowed and dangerous ones always', async () => {
    expect((await decide(m, def('shell.exec'), { argv: ['echo'], env: { FOO: '1' } }, resolver)).kind).toBe('approval');
    const bar = await decide(m, def('shell.exec'), { argv: ['echo'], env: { BAR: '1' } }, resolver);
    expect(bar.kind).toBe('deny');
    const ld = await decide(m, def('shell.exec'), { argv: ['echo'], env: { LD_PRELOAD: '/tmp/x.so' } }, resolver);
    expect(ld).toEqual({ kind: 'deny', reason: 'shell.exec: setting LD_PRELOAD is never allowed' });
  });

  it('checks cwd against paths_allowed', async () => {
    expect((await decide(m, def('shell.exec'), { argv: ['echo'], cwd: `${root}/allowed` }, resolver)).kind).toBe('approval');
    expect((await decide(m, def('shell.exec'), { argv: ['echo'], cwd: `${root}/outside` }, resolver)).kind).toBe('deny');
  });

  it('matches container names against globs', async () => {
    expect((await decide(m, def('docker.restart'), { container: 'web-1' }, resolver)).kind).toBe('approval');
    const v = await decide(m, def('docker.restart'), { container: 'db' }, resolver);
    expect(v).toEqual({ kind: 'deny', reason: 'docker.restart db denied: not in containers [web-*]' });
  });
});

describe('approval defaults', () => {
  it('read never asks, write/exec ask (risky), admin always asks, explicit approval overrides', async () => {
    expect((await decide(m, def('sys.info'), {}, resolver)).kind).toBe('allow');
    expect((await decide(m, def('fs.delete'), { path: '~/ok.txt' }, resolver)).kind).toBe('approval');
    expect((await decide(m, def('fs.write'), { path: '~/x.txt', content: '' }, resolver)).kind).toBe('allow'); // approval: never
    expect((await decide(m, def('pkg.install'), { packages: ['curl'] }, resolver)).kind).toBe('approval');
  });

  it('the approval rule is one function (policy and the LLM prompt both use it)', () => {
    expect([needsApproval('read', undefined), needsApproval('write', undefined), needsApproval('exec', undefined), needsApproval('admin', undefined)]).toEqual([false, true, true, true]);
    expect([needsApproval('read', 'always'), needsApproval('admin', 'never'), needsApproval('read', 'risky'), needsApproval(undefined, 'risky')]).toEqual([true, false, false, true]);
  });
});

describe('precheck: what needs nothing from the device', () => {
  it('denies what is not enabled, binaries, env and names without a resolver; paths wait for the device', () => {
    expect(precheck(m, def('proc.list'), {})).toEqual({ kind: 'deny', reason: `proc.list is not enabled on ${m.device} (not listed in its manifest)` });
    expect(precheck(m, def('shell.exec'), { argv: ['rm'] })?.reason).toMatch(/^shell\.exec rm denied: not in binaries/);
    expect(precheck(m, def('shell.exec'), { argv: ['echo'], env: { LD_PRELOAD: 'x' } })?.reason).toMatch(/LD_PRELOAD is never allowed/);
    expect(precheck(m, def('docker.restart'), { container: 'db' })?.reason).toMatch(/not in containers/);
    expect(precheck(m, def('fs.read'), { path: '/etc/shadow' })).toBeNull();
  });
});
