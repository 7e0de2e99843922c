/**
 * The `vm` command family, declared once (capabilities/vm/commands.ts): the device bot's `!vm …`
 * (multi-word names in the chat dispatcher; the words become the capability's own key=value form for
 * !cap), and the CLI `meshpilot vm … <device>` as real child processes against real podman.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dispatchChat, type ChatCaller } from '../capabilities/commands.js';
import { parseKeyValues } from '../capabilities/args.js';
import { builtinRegistry } from '../capabilities/registry.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { DEVICE_COMMANDS } from '../bots/device-commands.js';
import { VM_VERBS } from '../capabilities/vm/commands.js';
import { makeTempDir } from './helpers/tmp.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');
const RUN = `c${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vmcli-${RUN}:latest`;
const tmp = makeTempDir('mp-vmcmd-');

afterAll(() => {
  try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-box-${RUN}`], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
  tmp.cleanup();
});

function chat() {
  const calls: Array<{ capability: string | undefined; pairs: readonly string[] }> = [];
  const replies: string[] = [];
  const ctx = { cap: async (capability: string | undefined, pairs: readonly string[]) => { calls.push({ capability, pairs }); } };
  const caller: ChatCaller = { may: () => true, reply: async (t) => { replies.push(t); } };
  // The rest of DeviceCommandContext is never reached by the vm commands.
  const send = (text: string) => dispatchChat(DEVICE_COMMANDS, text, caller, ctx as never);
  return { calls, replies, send };
}

/** What !cap does with the words: the capability's own key=value parser. */
function asCapArgs(capability: string, pairs: readonly string[]) {
  const r = parseKeyValues(builtinRegistry().get(capability)!, pairs);
  if (!r.ok) throw new Error(r.message);
  return r.args;
}

describe('!vm on the device bot', () => {
  it('parses by the capability schemas and runs the capability through !cap', async () => {
    const { calls, send } = chat();
    await send('!vm new dev image=localhost/base:1 cpus=0.5 ports=80,8080 ttl_h=2');
    expect(calls[0]?.capability).toBe('vm.new');
    expect(asCapArgs('vm.new', calls[0]!.pairs)).toEqual({ name: 'dev', image: 'localhost/base:1', cpus: 0.5, memory_mb: 512, disk_mb: 2048, ttl_h: 2, ports: [80, 8080] });
    await send('!vm exec dev ls -la / FOO=bar');
    expect(calls[1]?.capability).toBe('vm.exec');
    expect(asCapArgs('vm.exec', calls[1]!.pairs)).toEqual({ name: 'dev', argv: ['ls', '-la', '/', 'FOO=bar'] });
    await send('!VM ls');
    expect(calls[2]).toMatchObject({ capability: 'vm.ls' });
    await send('!vm image import /srv/rootfs.tar localhost/alpine:3');
    expect(asCapArgs('vm.image.import', calls[3]!.pairs)).toEqual({ path: '/srv/rootfs.tar', image: 'localhost/alpine:3' });
    await send('!vm rm dev');
    expect(calls[4]).toMatchObject({ capability: 'vm.rm', pairs: ['name=dev'] });
  });

  it('answers a wrong call with its usage, and !vm alone with the family', async () => {
    const { calls, replies, send } = chat();
    await send('!vm new dev');
    await send('!vm new Dev image=x');
    await send('!vm');
    await send('!vm frobnicate');
    expect(calls).toEqual([]);
    expect(replies[0]).toBe('Usage: !vm new <name> <image=…> [cpus=…] [memory_mb=…] [disk_mb=…] [ttl_h=…] [ports=…] [command=…]');
    expect(replies[1]).toContain('a VM name is 1-32 characters of a-z, 0-9 and -');
    expect(replies[2]).toBe(`Usage: !vm ${VM_VERBS.map((v) => v.verb).join('|')} … (send !help for each one's arguments)`);
    expect(replies[2]).toContain('!vm new|ls|exec|stop|start|logs|rm|');
    expect(replies[3]).toBe(replies[2]);
  });
});

function cli(home: string, args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn' }, encoding: 'utf8', input: '', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('meshpilot vm (real child processes, real podman)', () => {
  it('image import, new, exec, ls, rm on the local device; approval without a TTY needs --yes', () => {
    busyboxRootfs(tmp.dir, { applets: ['sh', 'sleep', 'echo', 'cat'] });
    const home = path.join(tmp.dir, 'home');
    mkdirSync(path.join(home, 'manifests'), { recursive: true });
    writeFileSync(path.join(home, 'manifests', 'local.yaml'), `device: local
capabilities:
  vm.new: { images: ["localhost/mp-vmcli-*"], approval: never }
  vm.ls: {}
  vm.exec: {}
  vm.rm: { approval: never }
  vm.image.import: { paths_allowed: ["${tmp.dir}/**"], approval: never }
`);
    const name = `box-${RUN}`;
    expect(cli(home, ['vm', 'image', 'import', 'local', path.join(tmp.dir, 'rootfs.tar'), IMAGE])).toMatchObject({ code: 0 });
    const created = cli(home, ['vm', 'new', 'local', name, '--image', IMAGE, '--memory_mb', '64', '--ports', '80', '--ttl_h', '1.5']);
    expect(created.code).toBe(0);
    expect(created.out).toContain(`created ${name} on local (${IMAGE}, 1 cpu, 64 MiB`);
    expect(created.out).toMatch(/port 80 -> 127\.0\.0\.1:\d+ on local/);
    expect(created.err).toMatch(/🧾 audit local #\d+ vm\.new ok/);

    const refused = cli(home, ['vm', 'exec', 'local', name, '--', 'echo', 'hi']);
    expect(refused.code).toBe(3);
    expect(refused.err).toContain('pass --yes');
    const ran = cli(home, ['vm', 'exec', 'local', name, '-y', '--', 'sh', '-c', 'echo "$0" && exit 4', 'in-vm']);
    expect(ran).toMatchObject({ code: 4, out: 'in-vm\n' });

    const ls = cli(home, ['vm', 'ls', 'local', '--output', 'json']);
    const rows = (JSON.parse(ls.out) as { result: { data: Array<{ name: string; owner: string; memoryMb: number }> } }).result.data;
    expect(rows.find((r) => r.name === name)).toMatchObject({ memoryMb: 64, owner: expect.stringMatching(/^cli:/) });

    expect(cli(home, ['vm', 'new', 'local', 'bad', '--image', IMAGE, '--cpus', 'lots']).code).toBe(2);
    expect(cli(home, ['vm', 'rm', 'local', name])).toMatchObject({ code: 0, out: `removed ${name} from local\n` });
    expect(cli(home, ['vm', 'rm', 'local', name])).toMatchObject({ code: 0, out: `${name} is already gone from local (counts as removed)\n` });
  }, 120_000);
});
