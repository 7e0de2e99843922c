/**
 * A device bot under the real supervisor, as `meshpilot up` runs it, in a createBotEnv environment: the
 * launcher-side runtime and config beside it, and the bot's DM with the operator joined. For tests of
 * launcher surfaces (HTTP API, dashboard) that reach a bot over IPC.
 */
import { pino } from 'pino';
import { loadConfigOrThrow, type Config } from '../../capabilities/config.js';
import { openRuntime, type Runtime } from '../../launcher/runtime.js';
import { Supervisor } from '../../launcher/supervisor.js';
import { DEVICE_MAIN, type BotEnv } from './bot-env.js';
import { bodyOf } from './phone.js';

export const silentLogger = pino({ level: 'silent' });

export interface SupervisedBot {
  rt: Runtime;
  sup: Supervisor;
  config: Config;
  botUser: string;
  /** The bot's DM with the operator (joined by the phone). */
  room: string;
  stop(): Promise<void>;
}

export async function startSupervisedBot(env: BotEnv, device: string, capabilitiesYaml: string): Promise<SupervisedBot> {
  const botUser = (await env.registerBot(device)).userId;
  env.writeManifest(device, capabilitiesYaml);
  const rt = openRuntime({ root: env.home });
  const config = loadConfigOrThrow(rt.home.config);
  const sup = new Supervisor({
    entry: DEVICE_MAIN, home: env.home, desiredDevices: () => [device], watch: false,
    settings: { maxCrashes: 3, crashWindowS: 60, backoffMaxS: 1, readyTimeoutMs: 60_000 },
    env: { MESHPILOT_MATRIX_E2EE: 'off', MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_TEST_LOG'] ?? 'warn' },
    logger: silentLogger,
  });
  const ready = new Promise<void>((resolve) => sup.once('ready', () => resolve()));
  await sup.start();
  await ready;
  const live = await env.phone.waitFor((e) => e.sender === botUser && new RegExp(`✓ ${device} live`).test(bodyOf(e)), 60_000);
  const room = live.room_id;
  await env.phone.waitFor((e) => e.room_id === room && e.type === 'm.room.member' && e.state_key === env.operator.userId && (e.content as { membership?: string }).membership === 'join');
  return {
    rt, sup, config, botUser, room,
    async stop() {
      await sup.stop();
      await rt.close();
    },
  };
}
