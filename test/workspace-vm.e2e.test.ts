/**
 * A workspace homed in a VM, end to end: the real launcher (`meshpilot up`), the CLI as a separate
 * process, real podman (an image from a busybox-static rootfs: no registry), the test homeserver.
 * `vm new` makes the VM on the host device; an org template puts a workspace in it (`vm:`); the import
 * makes its home inside the VM through vm.exec (audited on the host's chain), derives a manifest whose
 * transport runs every call inside the VM, and its bot comes up live. From chat, the bot lists and
 * reads its home inside the VM, and is refused outside it. `workspace rm --purge` deletes the home
 * inside the VM. Nothing of it is on the host's file system.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { MESHPILOT_BIN, startLauncher, type UpLauncher } from './helpers/launcher-up.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `w${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-wsvm-${RUN}:latest`;
const VM = `box-${RUN}`;
const WS = 'sandbox';
const HOME_IN_VM = '~/ws/sandbox';

let env: BotEnv;
let launcher: UpLauncher;
let room = '';

const childEnv = (): NodeJS.ProcessEnv => ({
  PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: env.home, MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn',
});

function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MESHPILOT_BIN, ...args], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('exit', (code) => resolve({ code, out, err }));
  });
}

function podman(...args: string[]): string {
  return execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A path inside the VM exists (as its shell sees it; ~ is its $HOME). */
function inVm(p: string): boolean {
  try {
    podman('exec', `mp-${VM}`, 'sh', '-c', `test -e "${p.replace(/^~/, '$HOME')}"`);
    return true;
  } catch {
    return false;
  }
}

function botPrefix(): string {
  return /bot_prefix: (\S+)/.exec(readFileSync(path.join(env.home, 'config.yaml'), 'utf8'))?.[1] ?? 'meshpilot-';
}
const botId = (): string => `@${botPrefix()}${WS}:${env.hs.serverName}`;

async function ask(text: string, want: RegExp): Promise<string> {
  const idx = env.phone.events.length;
  await env.phone.client.sendTextMessage(room, text);
  const e = await env.phone.waitFor((ev) => env.phone.events.indexOf(ev) >= idx && ev.sender === botId() && want.test(bodyOf(ev)), 60_000);
  return bodyOf(e);
}

function hostAudit(): Array<{ capability: string; outcome: string; args: Record<string, unknown> }> {
  const db = new Database(path.join(env.home, 'meshpilot.db'), { readonly: true });
  try {
    const idx = (db.prepare('SELECT idx FROM audit_devices WHERE device = ?').get('host') as { idx: number } | undefined)?.idx;
    if (idx === undefined) return [];
    return (db.prepare('SELECT body FROM audit WHERE id BETWEEN ? AND ? ORDER BY id').all(idx * 2 ** 32 + 1, idx * 2 ** 32 + 2 ** 32 - 1) as Array<{ body: string }>).map((r) => JSON.parse(r.body));
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  env = await createBotEnv();
  // A rootfs with busybox-static and every applet it has (the vm transport's file operations use sh, stat, ls…)
  busyboxRootfs(env.work, { applets: 'all', dirs: ['root'], files: { 'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n' } });
  rmSync(path.join(env.home, 'manifests', 'local.yaml'), { force: true });
  await env.registerBot('host');
  const paths = `["${env.work}/**"]`;
  env.writeManifest('host', [
    ...['fs.read', 'fs.list', 'fs.stat', 'fs.write', 'fs.delete'].map((c) => `  ${c}: { paths_allowed: ${paths}, approval: never }`),
    '  sys.info: {}',
    '  vm.new: { images: ["localhost/mp-wsvm-*"], approval: never }',
    '  vm.ls: {}',
    '  vm.rm: { approval: never }',
    '  vm.exec: { approval: never }',
    `  vm.image.import: { paths_allowed: ${paths}, approval: never }`,
    '',
  ].join('\n'));
  launcher = startLauncher(childEnv());
  await launcher.waitOut(/launcher running \(pid \d+\)/, 60_000);
  const imp = await cli(['vm', 'image', 'import', 'host', path.join(env.work, 'rootfs.tar'), IMAGE]);
  expect(imp.code, `${imp.out}\n${imp.err}`).toBe(0);
  const made = await cli(['vm', 'new', 'host', VM, '--image', IMAGE, '--memory_mb', '64', '--ttl_h', '1']);
  expect(made.code, `${made.out}\n${made.err}`).toBe(0);
}, 180_000);

afterAll(async () => {
  await launcher?.stop();
  try { podman('rm', '-f', '-t', '0', `mp-${VM}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  await env?.cleanup();
}, 60_000);

describe('a workspace homed in a VM', () => {
  it('is imported into the VM: its home and role file are inside it, its manifest runs every call there, its bot says live', async () => {
    const tpl = path.join(env.work, 'org.yaml');
    writeFileSync(tpl, [
      'name: vm-lab',
      'workspaces:',
      `  - name: ${WS}`,
      '    role: Tries things out in its sandbox.',
      '    device: host',
      `    vm: ${VM}`,
      `    home: ${HOME_IN_VM}`,
      '    capabilities: [fs.read, fs.list, fs.write]',
      '',
    ].join('\n'));
    const dry = await cli(['workspace', 'import', tpl, '--dry-run']);
    expect(dry.code, dry.err).toBe(0);
    expect(dry.out).toContain(`+ ${WS}  create in VM ${VM} on host`);
    const r = await cli(['workspace', 'import', tpl, '--yes']);
    expect(r.code, `${r.out}\n${r.err}\n${launcher.output().slice(-3000)}`).toBe(0);
    expect(r.out).toContain(`✓ ${WS} live (reports to —)`);
    const live = await env.phone.waitFor((e) => e.sender === botId() && new RegExp(`^✓ ${WS} live`).test(bodyOf(e)), 60_000);
    room = live.room_id ?? '';
    expect(room).not.toBe('');

    // inside the VM, not on the host
    expect(podman('exec', `mp-${VM}`, 'cat', '/root/ws/sandbox/ROLE.md')).toContain('Tries things out in its sandbox.');
    expect(existsSync(path.join(os.homedir(), 'ws', 'sandbox'))).toBe(false);
    // the derived manifest: every call runs in the VM, through the host's own transport; paths narrowed to the home
    const manifest = readFileSync(path.join(env.home, 'manifests', `${WS}.yaml`), 'utf8');
    expect(manifest).toMatch(/transport:\s*\n\s+kind: vm\n\s+vm: box-/);
    expect(manifest).toMatch(/via:\s*\n\s+kind: local/);
    expect(manifest).toContain(`- ${HOME_IN_VM}/**`);
    expect(manifest).not.toContain(env.work);
    // the home was made by vm.exec on the host device, audited there
    const execs = hostAudit().filter((e) => e.capability === 'vm.exec');
    expect(execs.length).toBeGreaterThanOrEqual(2);
    expect(execs.some((e) => e.outcome === 'ok' && JSON.stringify(e.args).includes('ROLE.md'))).toBe(true);
    const ls = await cli(['workspace', 'ls']);
    expect(ls.out).toMatch(new RegExp(`${WS} {2}live {2}in VM ${VM} on host {2}~/ws/sandbox`));
  }, 240_000);

  it('from chat, its bot works inside the VM: lists and writes in its home, and is refused outside it', async () => {
    expect(await ask(`!cap fs.list path=${HOME_IN_VM}`, /ROLE\.md/)).toContain('ROLE.md');
    expect(await ask(`!cap fs.write path=${HOME_IN_VM}/notes.txt content=hello-from-chat`, /wrote|denied|failed|error/i)).toMatch(/wrote 15 bytes/);
    expect(podman('exec', `mp-${VM}`, 'cat', '/root/ws/sandbox/notes.txt')).toBe('hello-from-chat');
    expect(existsSync(path.join(os.homedir(), 'ws', 'sandbox', 'notes.txt'))).toBe(false);
    const outside = await ask('!cap fs.read path=/etc/passwd', /denied|not allowed|outside/i);
    expect(outside).toMatch(/denied|not allowed|outside/i);
  }, 120_000);

  it('workspace rm --purge deletes its home inside the VM; the VM itself stays', async () => {
    expect(inVm(HOME_IN_VM)).toBe(true);
    const r = await cli(['workspace', 'rm', WS, '--yes', '--purge']);
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    expect(r.out).toContain(`home ${HOME_IN_VM} in VM ${VM} on host deleted`);
    expect(inVm(HOME_IN_VM)).toBe(false);
    expect(inVm('/bin/sh')).toBe(true);
    expect(existsSync(path.join(env.home, 'manifests', `${WS}.yaml`))).toBe(false);
  }, 120_000);
});
