/**
 * End to end over the real Matrix test server and real podman: the operator shares a VM's port with a
 * friend from Element (`!vm share … to=@friend`); the device bot DMs the friend a one-time login link
 * that lands on the share; the friend opens it on the launcher's HTTP server (share gateway +
 * dashboard, with the config) and gets the VM's page, but not the dashboard; `!vm unshare` makes
 * the link 404; both calls are in the audit.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../capabilities/config.js';
import { layout } from '../capabilities/home.js';
import { logger } from '../capabilities/log.js';
import { setShareStore } from '../capabilities/vm/shares.js';
import { dashboardSurface } from '../launcher/http/dashboard/index.js';
import { startHttpServer, type RunningHttpServer } from '../launcher/http/server.js';
import { shareSurface } from '../launcher/http/share.js';
import { openRuntime, type Runtime } from '../launcher/runtime-core.js';
import type { ClientEvent } from './fixtures/homeserver.js';
import { createBotEnv, type BotEnv } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import type { RegisteredUser } from './helpers/test-homeserver.js';
import { busyboxRootfs } from './helpers/busybox-rootfs.js';

const RUN = `h${process.pid.toString(36)}`;
const IMAGE = `localhost/mp-sharee2e-${RUN}:latest`;
const VM = `web-${RUN}`;
const podman = (...args: string[]): string => execFileSync('podman', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let env: BotEnv;
let botUserId: string;
let room: string;
let friend: RegisteredUser;
let friendPhone: PhoneHandle;
let rt: Runtime;
let server: RunningHttpServer;

const fromBot = (e: ClientEvent): boolean => e.sender === botUserId && e.type === 'm.room.message';

beforeAll(async () => {
  env = await createBotEnv({ withLlm: false });
  busyboxRootfs(env.work, { applets: ['sh', 'sleep', 'httpd'], dirs: ['www'], files: { 'www/index.html': 'shared with a friend\n' } });
  podman('import', '--change', 'CMD ["/bin/sleep","3600"]', path.join(env.work, 'rootfs.tar'), IMAGE);

  botUserId = (await env.registerBot('box')).userId;
  env.writeManifest('box', [
    '  vm.new: { images: ["localhost/mp-sharee2e-*"], approval: never }',
    '  vm.ls: {}',
    '  vm.rm: { approval: never }',
    '  vm.share: { approval: never }',
    '  vm.unshare: { approval: never }',
    '',
  ].join('\n'));
  ({ room } = await env.startBotInDm('box'));
  friend = await env.hs.registerUser('friend', 'pw-friend');
  friendPhone = await startPhone(env.hs, friend);

  // The launcher's HTTP server on the same MESHPILOT_HOME, with its config (the dashboard is staff-only then).
  rt = openRuntime({ root: env.home });
  const config = loadConfig(layout(env.home).config);
  if (!config.ok) throw new Error('config');
  server = await startHttpServer({
    runtime: rt, config: config.config, http: { listen: '127.0.0.1:0', max_body_bytes: 64 * 1024, auth_failures_per_min: 10 }, logger: logger('http'),
  }, [shareSurface(), dashboardSurface()]);
}, 120_000);

afterAll(async () => {
  try { podman('rm', '-f', '-t', '0', `mp-${VM}`); } catch { /* gone */ }
  try { podman('rmi', '-f', IMAGE); } catch { /* gone */ }
  friendPhone?.stop();
  await server?.close();
  await rt?.close();
  setShareStore(undefined);
  await env?.cleanup();
}, 60_000);

async function operatorSays(text: string): Promise<number> {
  const idx = env.phone.events.length;
  await env.phone.client.sendTextMessage(room, text);
  return idx;
}
const botSays = (match: RegExp, since: number) =>
  env.phone.waitFor((e) => fromBot(e) && e.room_id === room && env.phone.events.indexOf(e) >= since && match.test(bodyOf(e)), 30_000);

describe('sharing a VM with a friend from Matrix (real Synapse, real podman, real HTTP)', () => {
  it('!vm share … to=@friend DMs the friend a login link to the share; they see the VM, not the dashboard; !vm unshare → 404', async () => {
    const created = bodyOf(await botSays(/vm\.new on box/, await operatorSays(`!vm new ${VM} image=${IMAGE} cpus=0.5 memory_mb=64 disk_mb=1024 ttl_h=1 ports=[8080] command=["httpd","-f","-p","8080","-h","/www"]`)));
    expect(created).toContain('port 8080 -> 127.0.0.1:');

    const shared = bodyOf(await botSays(/vm\.share on box/, await operatorSays(`!vm share ${VM} 8080 to=${friend.userId}`)));
    const id = /\/s\/([0-9a-f]{32})\//.exec(shared)?.[1];
    expect(id, shared).toBeDefined();
    expect(shared).toContain(`a one-time login link goes to ${friend.userId}`);

    // The friend's DM from the bot: a login link that lands on the share.
    const dm = bodyOf(await friendPhone.waitFor((e) => fromBot(e) && /login\?t=/.test(bodyOf(e)), 30_000));
    expect(dm).toContain(`${env.operator.userId} shared ${VM}:8080 on box with you`);
    const link = new URL(/(http:\/\/\S+\/login\?t=\S+)/.exec(dm)![1]!);
    expect(link.searchParams.get('next')).toBe(`/s/${id}/`);

    const share = `${server.url}/s/${id}/`;
    expect((await fetch(share)).status).toBe(403);
    const login = await fetch(`${server.url}/login`, {
      method: 'POST', redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ t: link.searchParams.get('t')!, next: link.searchParams.get('next')! }).toString(),
    });
    expect(login.status).toBe(303);
    expect(login.headers.get('location')).toBe(`/s/${id}/`);
    const cookie = login.headers.getSetCookie()[0]!.split(';')[0]!;

    const page = await fetch(share, { headers: { cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toBe('shared with a friend\n');
    // A friend's session opens the share only, not the dashboard.
    const dash = await fetch(`${server.url}/`, { headers: { cookie }, redirect: 'manual' });
    expect(dash.status).toBe(403);

    const un = bodyOf(await botSays(/vm\.unshare on box/, await operatorSays(`!vm unshare ${VM} 8080`)));
    expect(un).toContain(`unshared ${VM}:8080 on box`);
    expect((await fetch(share, { headers: { cookie } })).status).toBe(404);

    const audited = rt.audit.tail(50, 'box').filter((e) => e.outcome === 'ok').map((e) => `${e.actor} ${e.capability}`);
    expect(audited).toEqual(expect.arrayContaining([`${env.operator.userId} vm.share`, `${env.operator.userId} vm.unshare`]));
    expect(rt.audit.verify('box').ok).toBe(true);

    bodyOf(await botSays(/vm\.rm on box/, await operatorSays(`!vm rm ${VM}`)));
  }, 120_000);
});
