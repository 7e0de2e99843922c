/**
 * `meshpilot init` against a homeserver (the real Synapse when MESHPILOT_TEST_HOMESERVER /
 * MESHPILOT_TEST_REGISTRATION_SECRET are set, the fixture otherwise), through the real CLI.
 *
 * Issue 14 §2.8: re-installing against the same homeserver, where the bot accounts exist from an earlier
 * install, printed a warning and exited 0, and the bots then failed with "no Matrix account".
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCredentials } from '../bots/credentials.js';
import { loginWithPassword, registerWithSharedSecret, whoamiWithToken } from '../bots/matrix/index.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { startTestHomeserver, type TestHomeserver } from './helpers/test-homeserver.js';
import { tempDir } from './helpers/tmp.js';

const BIN = path.join(PACKAGE_ROOT, 'bin', 'meshpilot.mjs');

let hs: TestHomeserver;

beforeAll(async () => {
  hs = await startTestHomeserver();
}, 60_000);

afterAll(async () => {
  await hs?.stop();
});

/** Runs the CLI as a child process; asynchronously, as the fixture homeserver lives in this process. */
function cli(home: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, MESHPILOT_HOME: home, MESHPILOT_LOG_LEVEL: 'warn', ANTHROPIC_API_KEY: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString('utf8'); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString('utf8'); });
    const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`meshpilot ${args[0]} did not finish:\n${out}\n${err}`)); }, 60_000);
    child.on('close', (code) => { clearTimeout(t); resolve({ code, out, err }); });
  });
}

const operatorId = (): string => `@${hs.unique('lucas')}:${hs.serverName}`;

/** init's flags for this homeserver (no questions asked). */
const initArgs = (extra: string[]): string[] => [
  'init', '--homeserver', hs.url, '--server-name', hs.serverName, '--operator', operatorId(),
  '--registration-secret', hs.registrationSharedSecret, '--anthropic-key', 'sk-test', '-y', ...extra,
];

/** A bot prefix no earlier run used (accounts outlive runs on the real server). */
let n = 0;
const freshPrefix = (): string => `${hs.unique(`mpi${++n}`)}-`;

describe(`meshpilot init with a registration secret (${process.env['MESHPILOT_TEST_HOMESERVER'] ? 'real Synapse' : 'fixture homeserver'})`, () => {
  it('--bot-prefix: registers the device bot and the operator bot under that prefix', async () => {
    const prefix = freshPrefix();
    const home = tempDir('mp-init-');
    const r = await cli(home, initArgs(['--bot-prefix', prefix]));
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const local = `@${prefix}local:${hs.serverName}`;
    const ops = `@${prefix.replace(/[-._=]+$/, '')}:${hs.serverName}`;
    expect(r.out).toContain(`registered ${local} for local`);
    expect(r.out).toContain(`registered ${ops} for the operator room`);
    expect(readFileSync(path.join(home, 'config.yaml'), 'utf8')).toContain(`bot_prefix: ${prefix}`);
    for (const [keys, userId] of [['local', local], ['_operator', ops]] as const) {
      const creds = readCredentials(path.join(home, 'keys'), keys);
      expect(creds?.userId).toBe(userId);
      // The stored password is the account's (a lost crypto store is replaced by logging in with it).
      expect((await loginWithPassword({ homeserverUrl: hs.url, user: userId, password: creds!.password! })).userId).toBe(userId);
      expect((await whoamiWithToken({ homeserverUrl: hs.url, accessToken: creds!.accessToken })).userId).toBe(userId);
    }
  }, 90_000);

  it('re-installing where the accounts exist: exits non-zero and says what to do', async () => {
    const prefix = freshPrefix();
    const first = await cli(tempDir('mp-init-'), initArgs(['--bot-prefix', prefix]));
    expect(first.code).toBe(0);

    const home = tempDir('mp-init-');
    const again = await cli(home, initArgs(['--bot-prefix', prefix]));
    expect(again.code).toBe(1);
    expect(again.err).toContain(`@${prefix}local:${hs.serverName} already exists`);
    expect(again.err).toContain('--password');
    expect(again.err).toContain('--bot-prefix');
    expect(again.err).not.toMatch(/\n\s+at /); // no stack trace
    expect(again.out).not.toContain('next: `npm start`');
    // Nothing half-made: no credentials for the accounts it could not set up.
    expect(existsSync(path.join(home, 'keys', 'local', 'matrix.json'))).toBe(false);
  }, 90_000);

  it('--password of the existing accounts: logs in and stores the credentials; a wrong one fails', async () => {
    const prefix = freshPrefix();
    const password = 'pw-earlier-install';
    const existing = new Map<string, string>();
    for (const [keys, localpart] of [['local', `${prefix}local`], ['_operator', prefix.replace(/[-._=]+$/, '')]] as const) {
      const u = await registerWithSharedSecret({ homeserverUrl: hs.url, sharedSecret: hs.registrationSharedSecret, localpart, password });
      existing.set(keys, u.userId);
    }

    const wrong = await cli(tempDir('mp-init-'), initArgs(['--bot-prefix', prefix, '--password', 'not-it']));
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(/password .*refused/);

    const home = tempDir('mp-init-');
    const r = await cli(home, initArgs(['--bot-prefix', prefix, '--password', password]));
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`logged in as ${existing.get('local')} for local`);
    for (const [keys, userId] of existing) {
      const creds = readCredentials(path.join(home, 'keys'), keys);
      expect(creds?.userId).toBe(userId);
      expect(creds?.password).toBe(password);
      // The stored device is the one the stored token belongs to.
      const who = await whoamiWithToken({ homeserverUrl: hs.url, accessToken: creds!.accessToken });
      expect(who.userId).toBe(userId);
      expect(creds?.deviceId).toBe(who.deviceId);
    }
  }, 90_000);

  it('an invalid --bot-prefix is a usage error', async () => {
    const r = await cli(tempDir('mp-init-'), initArgs(['--bot-prefix', 'Bad Prefix!']));
    expect(r.code).toBe(2);
    expect(r.err).toContain('--bot-prefix may only hold a-z, 0-9');
  }, 60_000);
});
