/**
 * matrix-bot-sdk's crypto storage provider, ours (see FileCryptoStorage). The crypto module's own store
 * (keys, sessions) lives beside it in the same directory.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { RustSdkCryptoStorageProvider, type ICryptoStorageProvider } from 'matrix-bot-sdk';
import { z } from 'zod';
import { MeshpilotError } from '../../capabilities/errors.js';
import { errInfo } from './errors.js';

/** `bot-sdk.json` as the SDK's RustSdkCryptoStorageProvider writes it (lowdb): our provider reads and writes the same file. */
const cryptoStorageFileSchema = z.object({
  deviceId: z.string().max(255).nullable().optional(),
  rooms: z.record(z.string().regex(/^[0-9a-f]{128}$/), z.looseObject({ algorithm: z.string().max(255) })).optional(),
}).loose();
type CryptoRoom = Parameters<ICryptoStorageProvider['storeRoom']>[1];

/**
 * matrix-bot-sdk's crypto storage (the Matrix device id, each encrypted room's settings), in the file
 * format of its RustSdkCryptoStorageProvider (`bot-sdk.json`: deviceId, rooms by sha512 of the room id),
 * so stores written by earlier versions keep working. Ours because the SDK's loads lowdb, and with it
 * the whole of lodash, into every bot, and hashes the room id in JavaScript (hash.js) on each of the
 * several lookups per message. Here lookups come from memory and each change replaces the file atomically.
 */
export class FileCryptoStorage implements ICryptoStorageProvider {
  /** What CryptoClient hands to OlmMachine.initialize: the store dir and RustSdkCryptoStoreType.Sled (0). */
  readonly storagePath: string;
  readonly storageType = 0;
  private readonly file: string;
  private readonly state: { deviceId: string | null; rooms: Record<string, CryptoRoom> };

  constructor(storageDir: string) {
    this.storagePath = path.resolve(storageDir);
    mkdirSync(this.storagePath, { recursive: true, mode: 0o700 });
    this.file = path.join(this.storagePath, 'bot-sdk.json');
    this.state = { deviceId: null, rooms: {} };
    if (!existsSync(this.file)) return;
    let parsed: z.infer<typeof cryptoStorageFileSchema>;
    try {
      parsed = cryptoStorageFileSchema.parse(JSON.parse(readFileSync(this.file, 'utf8')));
    } catch (err) {
      throw new MeshpilotError('internal', `the crypto storage file ${this.file} is unreadable (${errInfo(err).message.slice(0, 200)}); move it away to start this device's encryption afresh`);
    }
    this.state = { deviceId: parsed.deviceId ?? null, rooms: (parsed.rooms ?? {}) as Record<string, CryptoRoom> };
  }

  private static key(roomId: string): string {
    return createHash('sha512').update(roomId).digest('hex');
  }

  private save(): void {
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state), { mode: 0o600 });
    renameSync(tmp, this.file);
  }

  /** The stored device id, or null when none is stored yet (getDeviceId without the promise). */
  deviceIdNow(): string | null {
    return this.state.deviceId;
  }

  async getDeviceId(): Promise<string> {
    return this.state.deviceId ?? ''; // the SDK takes a falsy id as none stored yet
  }

  async setDeviceId(deviceId: string): Promise<void> {
    this.state.deviceId = deviceId;
    this.save();
  }

  async getRoom(roomId: string): Promise<CryptoRoom> {
    return this.state.rooms[FileCryptoStorage.key(roomId)] as CryptoRoom;
  }

  async storeRoom(roomId: string, config: CryptoRoom): Promise<void> {
    this.state.rooms[FileCryptoStorage.key(roomId)] = config;
    this.save();
  }
}
// MatrixClient accepts only `instanceof RustSdkCryptoStorageProvider`. Inheriting its prototype (not its
// constructor, which would open the lowdb file) passes that check; every method it has is overridden above.
Object.setPrototypeOf(FileCryptoStorage.prototype, RustSdkCryptoStorageProvider.prototype);
