// ensureCrossSigning's talk with the homeserver, on a scripted client: what it sends, and what it makes of refusals.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureCrossSigning } from '../bots/matrix/cross-signing.js';
import type { SessionClient } from '../bots/matrix/sdk-patches.js';

interface Sent { path: string; body: Record<string, unknown> }
const dirs: string[] = [];
afterEach(() => { for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true }); });

/** A client whose crypto machine has (or lacks) an identity, and whose homeserver answers each POST through `answer`. */
function scripted(o: { hasSelfSigning: boolean; answer: (p: string, body: Record<string, unknown>, n: number) => unknown }): { client: SessionClient; sent: Sent[] } {
  const sent: Sent[] = [];
  const machine = {
    crossSigningStatus: async () => ({ hasMaster: o.hasSelfSigning, hasSelfSigning: o.hasSelfSigning, hasUserSigning: o.hasSelfSigning }),
    signOwnDevice: async () => ({ '@bot:hs': { DEV1: { signatures: {} } } }),
    bootstrapCrossSigning: async () => ({ uploadSigningKeys: { master_key: { keys: {} } }, uploadSignatures: { '@bot:hs': { DEV1: {} } } }),
    exportCrossSigningKeys: async () => ({ masterKey: 'm', selfSigningKey: 's', userSigningKey: 'u' }),
  };
  const client = {
    crypto: { isReady: true, clientDeviceId: 'DEV1', engine: { machine } },
    doRequest: async (_method: string, p: string, _q: unknown, body: Record<string, unknown>) => {
      sent.push({ path: p, body });
      const a = o.answer(p, body, sent.length);
      if (a instanceof Error) throw a;
      return a;
    },
  };
  return { client: client as unknown as SessionClient, sent };
}

function httpError(statusCode: number, body: Record<string, unknown>): Error {
  return Object.assign(new Error(`HTTP ${statusCode}`), { statusCode, body });
}

function opts(password?: string) {
  const storeDir = mkdtempSync(path.join(os.tmpdir(), 'mp-xsign-'));
  dirs.push(storeDir);
  return { storeDir, crossSigningFile: path.join(storeDir, 'cross-signing.json'), userId: '@bot:hs', log: pino({ level: 'silent' }), ...(password ? { password } : {}) };
}

describe('ensureCrossSigning', () => {
  it('a signature the homeserver refuses (200 with failures) is an error, and the device is not marked signed', async () => {
    const { client } = scripted({ hasSelfSigning: true, answer: () => ({ failures: { '@bot:hs': { DEV1: { errcode: 'M_INVALID_SIGNATURE', error: 'Invalid signature' } } } }) });
    const o = opts();
    await expect(ensureCrossSigning(client, o)).rejects.toThrow(/refused this device's cross-signing signature \(DEV1: Invalid signature\)/);
    expect(existsSync(path.join(o.storeDir, 'cross-signed.json'))).toBe(false);
  });

  it('signs the device with an existing identity and remembers it: the next start sends nothing', async () => {
    const { client, sent } = scripted({ hasSelfSigning: true, answer: () => ({ failures: {} }) });
    const o = opts();
    expect(await ensureCrossSigning(client, o)).toBeUndefined();
    expect(sent.map((s) => s.path)).toEqual(['/_matrix/client/v3/keys/signatures/upload']);
    expect(existsSync(path.join(o.storeDir, 'cross-signed.json'))).toBe(true);
    expect(await ensureCrossSigning(client, o)).toBeUndefined();
    expect(sent).toHaveLength(1);
  });

  it('a new identity: the password goes with the first key upload (one round trip), then the signatures', async () => {
    const { client, sent } = scripted({ hasSelfSigning: false, answer: () => ({ failures: {} }) });
    expect(await ensureCrossSigning(client, opts('pw-bot'))).toBeUndefined();
    expect(sent.map((s) => s.path)).toEqual(['/_matrix/client/v3/keys/device_signing/upload', '/_matrix/client/v3/keys/signatures/upload']);
    expect(sent[0]!.body['auth']).toEqual({ type: 'm.login.password', identifier: { type: 'm.id.user', user: '@bot:hs' }, password: 'pw-bot' });
  });

  it('a server that wants its UIA session gets the request once more with it; a wrong password is not retried', async () => {
    const withSession = scripted({ hasSelfSigning: false, answer: (p, body, n) => (n === 1 ? httpError(401, { session: 'S1', flows: [] }) : { failures: {} }) });
    await ensureCrossSigning(withSession.client, opts('pw-bot'));
    expect(withSession.sent.map((s) => (s.body['auth'] as { session?: string } | undefined)?.session)).toEqual([undefined, 'S1', undefined]);

    const wrong = scripted({ hasSelfSigning: false, answer: () => httpError(401, { errcode: 'M_FORBIDDEN', error: 'Invalid password', session: 'S2' }) });
    await expect(ensureCrossSigning(wrong.client, opts('bad'))).rejects.toThrow();
    expect(wrong.sent).toHaveLength(1);
  });

  it('without a password, a server asking for one gets a clear error', async () => {
    const { client } = scripted({ hasSelfSigning: false, answer: () => httpError(401, { session: 'S1', flows: [] }) });
    await expect(ensureCrossSigning(client, opts())).rejects.toThrow(/asks for the bot account's password/);
  });
});
