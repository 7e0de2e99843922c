/**
 * A complete meshpilot environment for bot tests: homeserver fixture, Anthropic fixture, a temp
 * MESHPILOT_HOME with config, a registered bot account and operator, a device manifest, and a
 * way to run the real device bot process.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeCredentials } from '../../bots/credentials.js';
import { ensureHome, PACKAGE_ROOT } from '../../capabilities/home.js';
import { writeConfig } from '../../capabilities/config.js';
import { botEnv, botExecArgv } from '../../launcher/bot-child.js';
import { startAnthropicFixture, type AnthropicFixture } from '../fixtures/anthropic.js';
import { startTestHomeserver, type RegisteredUser, type TestHomeserver } from './test-homeserver.js';
import { startPhone, type PhoneHandle } from './phone.js';

export const DEVICE_MAIN = path.join(PACKAGE_ROOT, 'bots', 'device-main.ts');

export interface BotEnv {
  home: string;
  work: string;
  /** The real Synapse (behind a fault proxy) when MESHPILOT_TEST_HOMESERVER is set, else the fixture. */
  hs: TestHomeserver;
  llm: AnthropicFixture;
  operator: RegisteredUser;
  phone: PhoneHandle;
  registerBot(device: string): Promise<RegisteredUser>;
  /** The bot account's user id (after registerBot). */
  botUserId(device: string): string;
  writeManifest(device: string, capabilitiesYaml: string): void;
  /** entry: another bot entry for this start (the built bundle), else the env's */
  startBot(device: string, o?: { entry?: string }): ChildProcess;
  /** Starts the bot, waits for ready and its "live" DM, and for the phone to have joined that DM. */
  startBotInDm(device: string): Promise<{ child: ChildProcess; room: string; botUserId: string }>;
  cleanup(): Promise<void>;
}

/**
 * `encryption` is the config's matrix.encryption; 'off' by default here, because most bot tests are about
 * the bot's logic and their phone has no crypto (test/e2ee.e2e.test.ts runs with it on).
 */
export async function createBotEnv(opts: { approvalTimeoutS?: number; withLlm?: boolean; entry?: string; nodeArgs?: string[]; encryption?: 'auto' | 'off'; phoneCrypto?: boolean } = {}): Promise<BotEnv> {
  const hs = await startTestHomeserver();
  const llm = await startAnthropicFixture({ apiKey: 'sk-test' });
  const root = mkdtempSync(path.join(os.tmpdir(), 'mp-bot-'));
  const home = path.join(root, 'home');
  const work = path.join(root, 'work');
  mkdirSync(work);
  const { home: layoutDirs } = ensureHome(home);
  const operator = await hs.registerUser('lucas', 'pw-lucas');
  const bots = new Map<string, string>();
  writeConfig(layoutDirs.config, {
    matrix: { homeserver_url: hs.url, server_name: hs.serverName, registration_shared_secret: hs.registrationSharedSecret, encryption: opts.encryption ?? 'off', ...uniqueBotNames(hs) },
    operators: [operator.userId],
    ...(opts.withLlm === false ? {} : { llm: { api_key: 'sk-test', base_url: llm.url, model: 'claude-test', max_tokens: 1024 } }),
    approvals: { timeout_s: opts.approvalTimeoutS ?? 300 },
  });
  const phone = await startPhone(hs, operator, opts.phoneCrypto ? { crypto: true } : {});
  const children: ChildProcess[] = [];
  const env: BotEnv = {
    home, work, hs, llm, operator, phone,
    async registerBot(device) {
      const user = await hs.registerUser(`${uniqueBotNames(hs).bot_prefix ?? 'meshpilot-'}${device}`, `pw-${device}`, { exact: true });
      bots.set(device, user.userId);
      writeCredentials(layoutDirs.keys, device, { userId: user.userId, accessToken: user.accessToken, deviceId: user.deviceId, password: `pw-${device}` });
      return user;
    },
    writeManifest(device, capabilitiesYaml) {
      writeFileSync(path.join(layoutDirs.manifests, `${device}.yaml`), `device: ${device}\nos: linux\ntransport: { kind: local }\ncapabilities:\n${capabilitiesYaml}`);
    },
    startBot(device, o = {}) {
      const entry = o.entry ?? opts.entry ?? DEVICE_MAIN;
      const child = fork(entry, [], {
        // The supervisor's node flags and environment (memory settings included), plus the device name.
        execArgv: botExecArgv(entry, opts.nodeArgs),
        // as `meshpilot up` does: with encryption off the crypto shim doesn't load its WebAssembly
        env: botEnv(home, { MESHPILOT_DEVICE: device, MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn', ...(opts.encryption === 'auto' ? {} : { MESHPILOT_MATRIX_E2EE: 'off' }) }),
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      children.push(child);
      return child;
    },
    botUserId(device) {
      const id = bots.get(device);
      if (!id) throw new Error(`registerBot('${device}') first`);
      return id;
    },
    async startBotInDm(device) {
      const child = env.startBot(device);
      await waitReady(child);
      const botUserId = env.botUserId(device);
      const live = await phone.waitFor((e) => e.sender === botUserId && e.type === 'm.room.message' && new RegExp(`✓ ${device} live`).test(String((e.content as { body?: unknown }).body)));
      await phone.waitFor((e) => e.room_id === live.room_id && e.type === 'm.room.member' && e.state_key === operator.userId && (e.content as { membership?: string }).membership === 'join');
      return { child, room: live.room_id, botUserId };
    },
    async cleanup() {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      phone.stop();
      await llm.close();
      await hs.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
  return env;
}

/** On a real server accounts outlive a run: bot and operator-bot names unique to this run (config `matrix`). */
export function uniqueBotNames(hs: TestHomeserver): { bot_prefix?: string; operator_bot?: string } {
  return hs.kind === 'synapse' ? { bot_prefix: `${hs.unique('meshpilot')}-`, operator_bot: hs.unique('meshpilot') } : {};
}

/** Resolves when the child sends {type:'ready'} (or rejects when it exits first). */
export function waitReady(child: ChildProcess, ms = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('bot did not become ready')), ms);
    child.on('message', (m: unknown) => {
      if ((m as { type?: string }).type === 'ready') { clearTimeout(t); resolve(); }
    });
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`bot exited with ${code} before ready`)); });
  });
}
