/** bots/matrix/crypto-storage.ts FileCryptoStorage: the SDK's crypto storage file format, without lowdb and lodash. */
import { describe, expect, it } from 'vitest';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { RustSdkCryptoStorageProvider } from 'matrix-bot-sdk';
import { FileCryptoStorage } from '../bots/matrix/index.js';
import { tempDir } from './helpers/tmp.js';

const room = (algorithm: string) => ({ algorithm, rotation_period_ms: 604800000, rotation_period_msgs: 100 });

describe('FileCryptoStorage', () => {
  it('reads what the SDK\'s RustSdkCryptoStorageProvider wrote, and the SDK reads what it writes', async () => {
    const dir = tempDir();
    const sdk = new RustSdkCryptoStorageProvider(dir);
    await sdk.setDeviceId('DEVICEA');
    await sdk.storeRoom('!a:example.org', room('m.megolm.v1.aes-sha2'));
    const ours = new FileCryptoStorage(dir);
    expect(ours.storagePath).toBe(path.resolve(dir));
    expect(ours).toBeInstanceOf(RustSdkCryptoStorageProvider); // MatrixClient refuses any other crypto store
    expect(await ours.getDeviceId()).toBe('DEVICEA');
    expect(await ours.getRoom('!a:example.org')).toEqual(room('m.megolm.v1.aes-sha2'));
    expect(await ours.getRoom('!unknown:example.org')).toBeUndefined();
    await ours.storeRoom('!b:example.org', room('m.megolm.v1.aes-sha2'));
    await ours.setDeviceId('DEVICEB');
    expect(statSync(path.join(dir, 'bot-sdk.json')).mode & 0o777).toBe(0o600);
    const again = new RustSdkCryptoStorageProvider(dir);
    expect(await again.getDeviceId()).toBe('DEVICEB');
    expect(await again.getRoom('!a:example.org')).toEqual(room('m.megolm.v1.aes-sha2'));
    expect(await again.getRoom('!b:example.org')).toEqual(room('m.megolm.v1.aes-sha2'));
  });

  it('starts empty in a new dir, keeps its state across instances, and names an unreadable file', async () => {
    const dir = path.join(tempDir(), 'crypto');
    const a = new FileCryptoStorage(dir);
    expect(await a.getDeviceId()).toBeFalsy();
    await a.setDeviceId('D1');
    expect(await new FileCryptoStorage(dir).getDeviceId()).toBe('D1');
    expect(JSON.parse(readFileSync(path.join(dir, 'bot-sdk.json'), 'utf8'))).toEqual({ deviceId: 'D1', rooms: {} });
    writeFileSync(path.join(dir, 'bot-sdk.json'), '{"deviceId": ');
    expect(() => new FileCryptoStorage(dir)).toThrow(/crypto storage file .*bot-sdk\.json is unreadable/);
  });
});
