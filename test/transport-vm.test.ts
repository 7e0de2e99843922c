/**
 * The vm transport (capabilities/transports/vm.ts) with real podman: a manifest whose transport is
 * `{kind: vm, vm, via}` runs fs.* / shell.exec / sys.info through invoke inside the VM (the files exist
 * in the container, not on this machine), argv stays literal, a timeout ends the command inside, the
 * manifest's paths hold (a symlink inside the VM escaping them is refused), a missing, a stopped and
 * a foreign container give their messages; the same VM reached over ssh (a root sshd on loopback).
 * One VM for the file, made with vm.image.import + vm.new from a busybox-static rootfs.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { parseManifest, type Manifest } from '../capabilities/manifest.js';
import { acceptHostKey, closeSshPool } from '../capabilities/transports/ssh.js';
import { vmHostFor } from '../capabilities/transports/vm.js';
import type { DirEntry, FileStat } from '../capabilities/transports/types.js';
import { startSshd, type SshdFixture } from './fixtures/sshd.js';
import { makeTempDir } from './helpers/tmp.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `v${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmt-${RUN}:latest`;
const VM = `ws-${RUN}`;
const FOREIGN = `fx-${RUN}`;
const WORK = `/srv/ws-${RUN}`;
const OP = '@op:example.org';
const tmp = makeTempDir('mp-vmt-');
const savedHome = process.env['MESHPILOT_HOME'];

function podman(...args: string[]): string {
  return execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
/** A command inside the VM, straight through podman (the check beside meshpilot's own path). */
const inVm = (...argv: string[]): string => podman('exec', `mp-${VM}`, ...argv);

const CAPS = `capabilities:
  fs.read: { paths_allowed: ["${WORK}/**"] }
  fs.list: { paths_allowed: ["${WORK}/**"] }
  fs.stat: { paths_allowed: ["${WORK}/**"] }
  fs.write: { paths_allowed: ["${WORK}/**"], approval: never }
  fs.delete: { paths_allowed: ["${WORK}/**"], approval: never }
  shell.exec: { binaries: ["echo", "sleep", "sh", "nosuch-${RUN}"], paths_allowed: ["${WORK}", "${WORK}/**"], env_allowed: ["GREETING"], approval: never }
  sys.info: {}
`;

function manifest(device: string, transport: string, caps = CAPS): Manifest {
  const r = parseManifest(`device: ${device}\ntransport: ${transport}\nlimits: { timeout_s: 30, max_output_bytes: 65536 }\n${caps}`, `${device}.yaml`);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.manifest;
}

const manifests = new Map<string, Manifest>();
let db: Db;
let invoker: Invoker;
let sshd: SshdFixture | undefined;
const call = (device: string, capability: string, args: Record<string, unknown>) => invoker.invoke({ device, capability, args, actor: OP });

beforeAll(async () => {
  process.env['MESHPILOT_HOME'] = tmp.dir;
  chmodSync(tmp.dir, 0o755);
  busyboxRootfs(tmp.dir, { applets: 'all', dirs: ['srv'] });
  chmodSync(path.join(tmp.dir, 'rootfs.tar'), 0o644);
  manifests.set('box', manifest('box', '{ kind: local }', `capabilities:
  vm.image.import: { paths_allowed: ["${tmp.dir}/**"], approval: never }
  vm.new: { images: ["localhost/mp-vmt-*"], approval: never }
`));
  manifests.set('ws', manifest('ws', `{ kind: vm, vm: ${VM}, via: { kind: local } }`));
  db = openDatabase(path.join(tmp.dir, 'meshpilot.db'));
  invoker = new Invoker({ manifests: { get: (d) => manifests.get(d) }, audit: new SqliteAuditLog(db) });
  const imp = await call('box', 'vm.image.import', { path: path.join(tmp.dir, 'rootfs.tar'), image: IMAGE });
  if (!imp.ok) throw new Error(JSON.stringify(imp.error ?? imp.result));
  const made = await call('box', 'vm.new', { name: VM, image: IMAGE, memory_mb: 64, ttl_h: 1 });
  if (!made.ok) throw new Error(JSON.stringify(made.error ?? made.result));
  inVm('mkdir', '-p', WORK);
}, 120_000);

afterAll(async () => {
  await invoker?.close();
  closeSshPool();
  db?.close();
  await sshd?.stop();
  for (const c of [`mp-${VM}`, `mp-${FOREIGN}`]) try { podman('rm', '-f', '-t', '0', c); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  tmp.cleanup();
  if (savedHome === undefined) delete process.env['MESHPILOT_HOME'];
  else process.env['MESHPILOT_HOME'] = savedHome;
}, 60_000);

describe('the vm transport on real podman', () => {
  it('fs.write / fs.read / fs.list / fs.stat / fs.delete act inside the VM, not on this machine', async () => {
    const file = `${WORK}/notes/today.txt`;
    const w = await call('ws', 'fs.write', { path: file, content: 'hello from the VM\n' });
    expect(w.error).toBeUndefined();
    expect(w.result?.ok).toBe(true);
    // missing directories made; the file is in the container, not here
    expect(inVm('cat', file)).toBe('hello from the VM\n');
    expect(existsSync(file)).toBe(false);
    expect(inVm('stat', '-c', '%a', file).trim()).toBe('644');
    // no temp file left beside it
    expect(inVm('ls', '-a', `${WORK}/notes`).split('\n').filter((n) => n.includes('.tmp'))).toEqual([]);

    const r = await call('ws', 'fs.read', { path: file });
    expect(r.result).toMatchObject({ ok: true, stdout: 'hello from the VM\n' });
    const part = await call('ws', 'fs.read', { path: file, offset: 6, length: 4 });
    expect(part.result?.stdout).toBe('from');

    // a replacement keeps the mode unless one is given; binary content through stdin
    inVm('chmod', '600', file);
    const bytes = Buffer.from([0, 1, 2, 255, 10, 13, 39, 34]);
    expect((await call('ws', 'fs.write', { path: file, content: bytes.toString('base64'), encoding: 'base64' })).result?.ok).toBe(true);
    expect(inVm('stat', '-c', '%a %s', file).trim()).toBe('600 8');
    expect(Buffer.from(inVm('od', '-An', '-tu1', file).trim().split(/\s+/).map(Number))).toEqual(bytes);
    expect((await call('ws', 'fs.write', { path: `${WORK}/notes/run.sh`, content: 'echo hi\n', mode: '0750' })).result?.ok).toBe(true);
    expect(inVm('stat', '-c', '%a', `${WORK}/notes/run.sh`).trim()).toBe('750');

    // names with a space and a newline come back whole
    inVm('sh', '-c', 'mkdir -p "$1" && : > "$1/odd name" && : > "$1/two\nlines" && ln -s today.txt "$1/link"', 'sh', `${WORK}/notes`);
    const ls = await call('ws', 'fs.list', { path: `${WORK}/notes` });
    expect(ls.error).toBeUndefined();
    const entries = ls.result?.data as { entries?: DirEntry[] } | DirEntry[];
    const list = Array.isArray(entries) ? entries : entries.entries ?? [];
    expect(list.map((e) => `${e.name}:${e.type}`).sort()).toEqual(['link:symlink', 'odd name:file', 'run.sh:file', 'today.txt:file', 'two\nlines:file']);
    expect(list.find((e) => e.name === 'today.txt')?.size).toBe(8);

    const st = await call('ws', 'fs.stat', { path: file });
    expect(st.result?.data).toMatchObject({ type: 'file', size: 8, mode: 0o600, uid: 0 } satisfies Partial<FileStat>);
    const missing = await call('ws', 'fs.stat', { path: `${WORK}/nope` });
    expect(missing.error?.code ?? missing.result?.error?.code).toBe('not_found');

    const del = await call('ws', 'fs.delete', { path: file });
    expect(del.result?.ok).toBe(true);
    expect(() => inVm('test', '-e', file)).toThrow();
    const again = await call('ws', 'fs.read', { path: file });
    expect(again.ok).toBe(false);
    expect(again.result?.error?.message ?? again.error?.message).toContain('does not exist');
  }, 180_000); // ~60 podman execs, 0.3-0.8 s each on a loaded machine

  it('shell.exec runs an argv in the VM: ; and $(...) stay literal, a missing program is tool_missing, sys.info is the VM', async () => {
    const lit = await call('ws', 'shell.exec', { argv: ['echo', 'a;b', '$(id)', '`hostname`', "'q'"] });
    expect(lit.result).toMatchObject({ ok: true, exitCode: 0, stdout: "a;b $(id) `hostname` 'q'\n" });
    const env = await call('ws', 'shell.exec', { argv: ['sh', '-c', 'echo "$PWD $HOSTNAME $GREETING"; cat'], cwd: WORK, env: { GREETING: '-e $(id)' }, stdin: 'from stdin' });
    expect(env.result?.stdout).toBe(`${WORK} ${VM} -e $(id)\nfrom stdin`);
    const code = await call('ws', 'shell.exec', { argv: ['sh', '-c', 'echo oops >&2; exit 3'] });
    expect(code.result).toMatchObject({ ok: false, exitCode: 3, stderr: 'oops\n' });
    const missing = await call('ws', 'shell.exec', { argv: [`nosuch-${RUN}`] });
    expect(missing.ok).toBe(false);
    expect(missing.result?.error?.code ?? missing.error?.code).toBe('tool_missing');
    expect(missing.result?.error?.message ?? missing.error?.message).toContain(`nosuch-${RUN} not installed in the VM ${VM}`);
    const info = await call('ws', 'sys.info', {});
    expect(info.result?.data).toMatchObject({ hostname: VM, os: 'linux' });
  }, 60_000);

  it('a timeout ends the command inside the VM', async () => {
    const t0 = Date.now();
    const r = await call('ws', 'shell.exec', { argv: ['sleep', '37'], timeout_s: 1 });
    expect(r.ok).toBe(false);
    expect(r.result?.error?.code).toBe('timeout');
    expect(Date.now() - t0).toBeLessThan(8000);
    // the program itself is gone (busybox's timeout watcher may linger for its -k grace, harmless)
    expect(inVm('ps', '-o', 'args').split('\n').map((l) => l.trim())).not.toContain('sleep 37');
  }, 30_000);

  it('without the VM\'s own timeout, the via Host ends podman exec and what it started inside is killed', async () => {
    const host = vmHostFor(manifests.get('ws')!, { inVmTimeout: false });
    try {
      const out = await host.exec({ argv: ['sh', '-c', 'sleep 38 & sleep 39'], timeoutMs: 1000, maxOutputBytes: 4096 });
      expect(out.timedOut).toBe(true);
      const left = inVm('ps', '-o', 'args').split('\n').map((l) => l.trim());
      expect(left.filter((l) => /sleep 3[89]/.test(l))).toEqual([]);
    } finally {
      await host.close();
    }
  }, 30_000);

  it('the manifest\'s paths hold inside the VM: outside is denied, a symlink escaping them is refused', async () => {
    const outside = await call('ws', 'fs.read', { path: '/etc/hostname' });
    expect(outside.decision).toBe('denied');
    expect(outside.error?.code).toBe('policy_denied');
    inVm('ln', '-sfn', '/etc', `${WORK}/etc-link`);
    const escape = await call('ws', 'fs.read', { path: `${WORK}/etc-link/hostname` });
    expect(escape.error?.code).toBe('policy_denied');
    const write = await call('ws', 'fs.write', { path: `${WORK}/etc-link/evil`, content: 'x' });
    expect(write.error?.code).toBe('policy_denied');
    expect(() => inVm('test', '-e', '/etc/evil')).toThrow();
  }, 30_000);

  it('a missing VM, a foreign container and a stopped VM are refused with their messages', async () => {
    manifests.set('gone', manifest('gone', `{ kind: vm, vm: nope-${RUN} }`));
    const gone = await call('gone', 'fs.stat', { path: `${WORK}/x` });
    expect(gone.ok).toBe(false);
    expect(gone.error?.code).toBe('not_found');
    expect(gone.error?.message).toBe(`no VM nope-${RUN} on gone`);

    // a container of that name meshpilot did not make: never acted on
    podman('create', '--runtime', 'runc', '--name', `mp-${FOREIGN}`, IMAGE);
    manifests.set('foreign', manifest('foreign', `{ kind: vm, vm: ${FOREIGN} }`));
    const foreign = await call('foreign', 'shell.exec', { argv: ['echo', 'hi'] });
    expect(foreign.ok).toBe(false);
    expect(foreign.error?.code).toBe('policy_denied');
    expect(foreign.error?.message).toContain('not created by meshpilot');

    // stopped: says so and how to start it; started again, the same host works (not remembered as down)
    podman('stop', '-t', '1', `mp-${VM}`);
    manifests.set('ws2', manifest('ws2', `{ kind: vm, vm: ${VM}, via: { kind: local } }`));
    for (const device of ['ws', 'ws2']) {
      const stopped = await call(device, 'shell.exec', { argv: ['echo', 'hi'] });
      expect(stopped.ok).toBe(false);
      expect(stopped.error?.message ?? stopped.result?.error?.message).toContain(`the VM ${VM} on ${device} is not running`);
      expect(stopped.error?.message ?? stopped.result?.error?.message).toContain(`vm start ${VM}`);
    }
    podman('start', `mp-${VM}`);
    const back = await call('ws', 'shell.exec', { argv: ['echo', 'back'] });
    expect(back.result?.stdout).toBe('back\n');
  }, 60_000);

  it('reaches the VM over ssh (via: an ssh transport)', async () => {
    sshd = await startSshd({ user: 'root' });
    acceptHostKey({ host: sshd.host, port: sshd.port, keyType: sshd.hostKeyType, fingerprint: sshd.hostKeyFingerprint });
    manifests.set('far', manifest('far', `{ kind: vm, vm: ${VM}, via: { kind: ssh, host: ${sshd.host}, port: ${sshd.port}, user: root, key: "${sshd.keyPath}" } }`));
    const w = await call('far', 'fs.write', { path: `${WORK}/over-ssh.txt`, content: 'via ssh' });
    expect(w.error).toBeUndefined();
    expect(inVm('cat', `${WORK}/over-ssh.txt`)).toBe('via ssh');
    const r = await call('far', 'fs.read', { path: `${WORK}/over-ssh.txt` });
    expect(r.result?.stdout).toBe('via ssh');
    const e = await call('far', 'shell.exec', { argv: ['echo', '$(hostname);'] });
    expect(e.result?.stdout).toBe('$(hostname);\n');
  }, 120_000);
});

describe('the vm transport in a manifest', () => {
  const parse = (transport: string) => parseManifest(`device: w\ntransport: ${transport}\n`, 'w.yaml');
  it('takes a VM name and a via of local (the default) or ssh', () => {
    const local = parse('{ kind: vm, vm: dev }');
    expect(local.ok && local.manifest.transport).toEqual({ kind: 'vm', vm: 'dev', via: { kind: 'local' } });
    const ssh = parse('{ kind: vm, vm: dev, via: { kind: ssh, host: pc1.lan, user: root } }');
    expect(ssh.ok && ssh.manifest.transport).toEqual({ kind: 'vm', vm: 'dev', via: { kind: 'ssh', host: 'pc1.lan', user: 'root' } });
  });
  it('refuses a via over mesh or another VM, a bad VM name and an ssh via without a host', () => {
    const issues = (t: string): string[] => {
      const r = parse(t);
      return r.ok ? [] : r.issues.map((i) => `${i.field}: ${i.message}`);
    };
    expect(issues('{ kind: vm, vm: dev, via: { kind: mesh, address: 10.0.0.2 } }')).toEqual(['transport.via.kind: a workspace in a VM needs its device reached over local or ssh']);
    expect(issues('{ kind: vm, vm: dev, via: { kind: vm, vm: other } }')).toEqual(['transport.via.kind: a workspace in a VM needs its device reached over local or ssh']);
    expect(issues('{ kind: vm, vm: -dev }')[0]).toMatch(/^transport\.vm: a VM name is 1-32 characters/);
    expect(issues('{ kind: vm, vm: dev, via: { kind: ssh } }')).toEqual(['transport.via: an ssh transport needs host or alias']);
    expect(issues('{ kind: vm, vm: dev, extra: 1 }')).toEqual(['transport.extra: unknown field']);
  });
});
