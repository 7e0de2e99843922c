/**
 * The device bot end to end as a user first meets it: encryption on (the default config), a phone
 * with crypto, the bot process started the way a developer would (tsx). Against the real homeserver
 * when MESHPILOT_TEST_HOMESERVER and MESHPILOT_TEST_REGISTRATION_SECRET are set (`.ci/run` does), else
 * the fixture; `npm run test:integration` runs only this file. Users and rooms are unique per run, so
 * it can run repeatedly against one server. The LLM side uses the Anthropic fixture.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeCredentials } from '../bots/credentials.js';
import { ensureHome } from '../capabilities/home.js';
import { writeConfig } from '../capabilities/config.js';
import { startAnthropicFixture, textReply, toolReply, type AnthropicFixture } from './fixtures/anthropic.js';
import { DEVICE_MAIN, waitReady } from './helpers/bot-env.js';
import { bodyOf, startPhone, type PhoneHandle } from './helpers/phone.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';

describe('device bot integration, encrypted, as a user first runs it', () => {
  let hs: TestHomeserver;
  let root: string;
  let work: string;
  let llm: AnthropicFixture;
  let phone: PhoneHandle;
  let bot: ChildProcess;
  let room: string;
  let botUser: string;
  const run = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

  beforeAll(async () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'mp-integ-'));
    work = path.join(root, 'work');
    mkdirSync(work);
    writeFileSync(path.join(work, 'integration.txt'), 'x');
    const home = ensureHome(path.join(root, 'home')).home;
    llm = await startAnthropicFixture();
    hs = await startTestHomeserver();
    const operator = await hs.registerUser(`mp-op-${run}`, `pw-${run}`);
    const botAccount = await hs.registerUser(`meshpilot-it${run}`, `pw-${run}-b`);
    botUser = botAccount.userId;
    writeConfig(home.config, {
      matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret },
      operators: [operator.userId],
      llm: { api_key: 'sk-test', base_url: llm.url, model: 'claude-test' },
    });
    const device = `it${run}`.slice(0, 32);
    writeCredentials(home.keys, device, { userId: botAccount.userId, accessToken: botAccount.accessToken, deviceId: botAccount.deviceId, password: `pw-${run}-b` });
    writeFileSync(path.join(home.manifests, `${device}.yaml`), `device: ${device}\ncapabilities:\n  sys.info: {}\n  sys.health: {}\n  fs.list: { paths_allowed: ["${work}/**"] }\n`);
    // The default config has end-to-end encryption on, so the phone runs crypto like Element does.
    phone = await startPhone(hs, operator, { crypto: true });
    bot = fork(DEVICE_MAIN, [], { execArgv: ['--import', 'tsx'], env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', MESHPILOT_HOME: home.root, MESHPILOT_DEVICE: device, MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await waitReady(bot, 60_000);
    const live = await phone.waitFor((e) => e.sender === botUser && /live/.test(bodyOf(e)), 60_000);
    room = live.room_id;
  }, 120_000);

  afterAll(async () => {
    if (bot && bot.exitCode === null) {
      const exited = new Promise((r) => bot.once('exit', r));
      bot.kill('SIGTERM');
      await exited;
    }
    phone?.stop();
    await llm?.close();
    await hs?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('answers !status with audit references', async () => {
    const idx = phone.events.length;
    await phone.client.sendTextMessage(room, '!status');
    const reply = await phone.waitFor((e) => e.sender === botUser && phone.events.indexOf(e) >= idx && /sys\.health ok/.test(bodyOf(e)), 60_000);
    expect(bodyOf(reply)).toMatch(/🧾 #\d+ sys\.info ok/);
  }, 90_000);

  it('runs an LLM tool call and reports it with its audit entry', async () => {
    llm.enqueue(toolReply([{ name: 'fs_list', input: { path: work } }]), textReply('Found integration.txt'));
    const idx = phone.events.length;
    await phone.client.sendTextMessage(room, 'what is in the work dir?');
    const reply = await phone.waitFor((e) => e.sender === botUser && phone.events.indexOf(e) >= idx && /Found integration\.txt/.test(bodyOf(e)), 60_000);
    expect(bodyOf(reply)).toMatch(/🧾 #\d+ fs\.list ok/);
  }, 90_000);
});
