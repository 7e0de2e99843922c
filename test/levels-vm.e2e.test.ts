/**
 * End to end, a citizen over Matrix with real podman: `!vm new` in their own DM, then the LLM asks for
 * vm.exec and the reply carries its audit footer; a second VM is over their quota and refused with
 * the quota's wording; !help shows only the vm commands granted to them.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { writeConfig } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { layout } from '../capabilities/home.js';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import type { RegisteredUser } from './helpers/test-homeserver.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `e${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-lvtest-${RUN}:latest`;
const DEV = `dev-${RUN}`;
const DEV2 = `dev2-${RUN}`;
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let env: BotEnv;
let botUserId: string;
let ann: RegisteredUser;
let annPhone: PhoneHandle;
let annRoom: string;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 30 });
  // The image, from a busybox-static rootfs (no registry here).
  busyboxRootfs(env.work, { applets: ['sh', 'sleep', 'hostname'] });
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(env.work, 'rootfs.tar'), IMAGE);

  botUserId = (await env.registerBot('box')).userId;
  ann = await env.hs.registerUser('ann', 'pw-ann');
  const file = layout(env.home).config;
  const config = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeConfig(file, { ...config, users: { [ann.userId]: 'citizen' }, quotas: { citizen: { vms: 1, cpus: 1, memory_mb: 256, disk_mb: 4096, max_ttl_h: 2 } } });
  env.writeManifest('box', [
    '  sys.info: {}',
    '  vm.new: { images: ["localhost/mp-lvtest-*"], tiers: [citizen, operator], approval: never }',
    '  vm.ls: { tiers: [citizen, operator] }',
    '  vm.exec: { tiers: [citizen, operator], approval: never }',
    '  vm.rm: { tiers: [citizen, operator], approval: never }',
    `  vm.image.import: { paths_allowed: ["${env.work}/**"] }`,
    '',
  ].join('\n'));
  await env.startBotInDm('box');
  annPhone = await startPhone(env.hs, ann);
  const res = await fetch(`${env.hs.url}/_matrix/client/v3/createRoom`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ann.accessToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ invite: [botUserId], is_direct: true, preset: 'trusted_private_chat' }),
  });
  annRoom = ((await res.json()) as { room_id: string }).room_id;
  await annPhone.waitFor((e) => e.room_id === annRoom && e.type === 'm.room.member' && e.state_key === botUserId && (e.content as { membership?: string }).membership === 'join', 20_000);
}, 120_000);

afterAll(async () => {
  for (const n of [DEV, DEV2]) try { podman('rm', '-f', '-t', '0', `mp-${n}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  annPhone?.stop();
  await env?.cleanup();
}, 60_000);

async function annSays(text: string): Promise<number> {
  const idx = annPhone.events.length;
  await annPhone.client.sendTextMessage(annRoom, text);
  return idx;
}
const botSays = (match: RegExp, since: number) =>
  annPhone.waitFor((e) => fromBot(e) && e.room_id === annRoom && annPhone.events.indexOf(e) >= since && match.test(bodyOf(e)), 30_000);

describe('a citizen with VMs over Matrix (real podman)', () => {
  it('!help lists the vm commands granted to citizens, not vm image import', async () => {
    const help = bodyOf(await botSays(/Commands:/, await annSays('!help')));
    expect(help).toContain('!vm new');
    expect(help).toContain('!vm exec');
    expect(help).not.toContain('!vm image import');
    expect(help).not.toContain('!status');
  });

  it('!vm new, then the LLM runs vm.exec in it and the reply carries the audit footer; a second VM is over the quota', async () => {
    const created = bodyOf(await botSays(new RegExp(`vm\\.new on box`), await annSays(`!vm new ${DEV} image=${IMAGE} cpus=0.5 memory_mb=64 disk_mb=1024 ttl_h=1`)));
    expect(created).not.toMatch(/denied|refused|failed/i);
    expect(podman('container', 'inspect', '--format', '{{index .Config.Labels "meshpilot.owner"}}', `mp-${DEV}`).trim()).toBe(ann.userId);

    env.llm.reset();
    env.llm.enqueue(toolReply([{ name: 'vm_exec', input: { name: DEV, argv: ['hostname'] } }]), textReply(`Your VM answers: ${DEV}.`));
    const reply = bodyOf(await botSays(/Your VM answers/, await annSays(`what is the hostname of ${DEV}?`)));
    expect(reply).toMatch(/🧾 #\d+ vm\.exec/);
    const tools = (env.llm.accepted[0]?.body as { tools?: Array<{ name: string }> }).tools?.map((t) => t.name).sort();
    expect(tools).toEqual(['vm_exec', 'vm_ls', 'vm_new', 'vm_rm']);
    const toolResult = JSON.stringify(env.llm.accepted[1]?.body);
    expect(toolResult).toContain(DEV);

    const over = bodyOf(await botSays(/quota/, await annSays(`!vm new ${DEV2} image=${IMAGE} cpus=0.5 memory_mb=64 disk_mb=1024 ttl_h=1`)));
    expect(over).toContain('citizen quota: 1 VM, you have 1');
    expect(() => podman('container', 'exists', `mp-${DEV2}`)).toThrow();

    const db = openDatabase(path.join(env.home, 'meshpilot.db'));
    const tail = new SqliteAuditLog(db).tail(20, 'box');
    db.close();
    expect(tail.find((e) => e.capability === 'vm.exec' && e.outcome === 'ok')).toMatchObject({ actor: `llm:${ann.userId}` });
    expect(tail.find((e) => e.capability === 'vm.new' && e.error_code === 'quota')).toMatchObject({ actor: ann.userId, decision: 'denied', outcome: 'not_run' });

    const rm = bodyOf(await botSays(/vm\.rm on box/, await annSays(`!vm rm ${DEV}`)));
    expect(rm).not.toMatch(/denied|failed/i);
  }, 120_000);
});
