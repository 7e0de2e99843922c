/**
 * End to end over Matrix with real podman: the operator's phone DMs the real device bot process;
 * `!vm new` creates a VM (reply with its audit footer), the LLM asks for vm.exec in it (the real output
 * goes back to the model, the reply carries the footer), `!vm ls` lists it, `!vm rm` removes it.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { textReply, toolReply } from './fixtures/anthropic.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf } from './helpers/phone.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `e${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-vme2e-${RUN}:latest`;
const VM = `dev-${RUN}`;
let env: BotEnv;
let room: string;
let botUserId: string;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';
const say = async (text: string): Promise<void> => { await env.phone.client.sendTextMessage(room, text); };
const botSays = (match: RegExp, sinceIdx: number): Promise<ClientEvent> =>
  env.phone.waitFor((e) => fromBot(e) && env.phone.events.indexOf(e) >= sinceIdx && match.test(bodyOf(e)), 30_000);

beforeAll(async () => {
  env = await createBotEnv({ approvalTimeoutS: 10 });
  busyboxRootfs(env.work, { applets: ['sh', 'sleep', 'uname', 'hostname'] });
  execFileSync('podman', ['import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(env.work, 'rootfs.tar'), IMAGE], { stdio: 'ignore' });
  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', [
    '  vm.new: { images: ["localhost/mp-vme2e-*"], approval: never }',
    '  vm.ls: {}',
    '  vm.exec: { approval: never }',
    '  vm.rm: { approval: never }',
    '',
  ].join('\n'));
  ({ room } = await env.startBotInDm('box'));
}, 90_000);

afterAll(async () => {
  await env?.cleanup();
  try { execFileSync('podman', ['rm', '-f', '-t', '0', `mp-${VM}`], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('podman', ['rmi', '-f', IMAGE], { stdio: 'ignore' }); } catch { /* gone */ }
}, 60_000);

describe('VMs from chat', () => {
  it('!vm new, then the LLM runs vm.exec in it, then !vm ls and !vm rm; every reply carries its audit footer', async () => {
    let idx = env.phone.events.length;
    await say(`!vm new ${VM} image=${IMAGE} memory_mb=64 cpus=0.5`);
    const created = await botSays(/created|vm\.new/, idx);
    expect(bodyOf(created)).toContain(`created ${VM} on box`);
    expect(bodyOf(created)).toMatch(/🧾 #\d+ vm\.new ok/);

    env.llm.enqueue(toolReply([{ name: 'vm_exec', input: { name: VM, argv: ['hostname'] } }]), textReply(`The VM answers to ${VM}.`));
    idx = env.phone.events.length;
    await say(`what is the hostname inside ${VM}?`);
    const reply = await botSays(/The VM answers/, idx);
    const footer = /🧾 #(\d+) vm\.exec ok/.exec(bodyOf(reply));
    expect(footer).not.toBeNull();
    // The model received the real output of the program in the VM.
    expect(JSON.stringify(env.llm.accepted[env.llm.accepted.length - 1]?.body)).toContain(`"content":"${VM}\\n"`);
    const db = openDatabase(path.join(env.home, 'meshpilot.db'));
    const entry = new SqliteAuditLog(db).get('box', Number(footer?.[1]));
    expect(entry).toMatchObject({ capability: 'vm.exec', outcome: 'ok', actor: `llm:${env.operator.userId}` });
    db.close();

    idx = env.phone.events.length;
    await say('!vm ls');
    const ls = await botSays(/vm\.ls/, idx);
    expect(bodyOf(ls)).toContain(`${VM}  running  ${IMAGE}  0.5 cpu 64M  ${env.operator.userId}`);

    idx = env.phone.events.length;
    await say(`!vm rm ${VM}`);
    const rm = await botSays(/vm\.rm/, idx);
    expect(bodyOf(rm)).toContain(`removed ${VM} from box`);
    expect(() => execFileSync('podman', ['container', 'exists', `mp-${VM}`])).toThrow();
  }, 120_000);
});
