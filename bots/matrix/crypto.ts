/**
 * The Matrix crypto module as a session sees it: whether one loads (native binding or meshpilot's
 * WebAssembly adapter, bots/crypto-optional), the parts of the SDK's private crypto objects the
 * session reaches into, and attachment decryption.
 */
import { createRequire } from 'node:module';
import { MeshpilotError } from '../../capabilities/errors.js';
import { errInfo } from './errors.js';
import type { EncryptedFile } from './events.js';

/** True when the native Matrix crypto module (not meshpilot's stub) is installed and loads. */
export function cryptoAvailable(): boolean {
  try {
    const req = createRequire(import.meta.url);
    const mod = req('@matrix-org/matrix-sdk-crypto-nodejs') as { __meshpilotCryptoAvailable?: unknown };
    return mod.__meshpilotCryptoAvailable === true;
  } catch {
    return false;
  }
}

/** Which crypto module loaded, in words (doctor). */
export function cryptoBackendName(): string {
  const b = cryptoBackend();
  return b === 'wasm' ? 'WebAssembly matrix-sdk-crypto' : b === 'native' ? 'native matrix-sdk-crypto' : 'none';
}

/** Which crypto module loaded: the native binding or meshpilot's WebAssembly adapter. */
export function cryptoBackend(): 'native' | 'wasm' | undefined {
  try {
    const mod = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as { __meshpilotBackend?: unknown };
    return mod.__meshpilotBackend === 'wasm' ? 'wasm' : mod.__meshpilotBackend === 'native' ? 'native' : undefined;
  } catch {
    return undefined;
  }
}

/** The shim's additions to the OlmMachine (wasm backend); the native binding has none of the optional ones. */
export interface CryptoMachine {
  markRequestAsSent(id: string, type: number, response: string): Promise<unknown>;
  crossSigningStatus?(): Promise<{ hasMaster: boolean; hasSelfSigning: boolean; hasUserSigning: boolean }>;
  bootstrapCrossSigning?(reset: boolean): Promise<{ uploadSigningKeys: Record<string, unknown>; uploadSignatures: Record<string, unknown> }>;
  exportCrossSigningKeys?(): Promise<{ masterKey?: string; selfSigningKey?: string; userSigningKey?: string } | undefined>;
  importCrossSigningKeys?(master?: string | null, selfSigning?: string | null, userSigning?: string | null): Promise<unknown>;
  isOwnDeviceCrossSigned?(): Promise<boolean>;
  signOwnDevice?(): Promise<Record<string, unknown> | undefined>;
  takeExtraRequests?(): Array<{ id: string; type: number; body: string }>;
}

export interface CryptoClientLike {
  isReady: boolean;
  clientDeviceId: string;
  encryptMedia(file: Buffer): Promise<{ buffer: Buffer; file: Record<string, unknown> }>;
  decryptMedia(file: Record<string, unknown>): Promise<Buffer>;
}

/** Decrypts (and checks the hash of) an encrypted attachment with the crypto module's Attachment API. */
export function decryptAttachment(bytes: Buffer, file: EncryptedFile): Buffer {
  const mod = createRequire(import.meta.url)('@matrix-org/matrix-sdk-crypto-nodejs') as {
    Attachment: { decrypt(a: unknown): Uint8Array };
    EncryptedAttachment: new (data: Uint8Array, info: string) => unknown;
  };
  try {
    return Buffer.from(mod.Attachment.decrypt(new mod.EncryptedAttachment(new Uint8Array(bytes), JSON.stringify(file))));
  } catch (err) {
    throw new MeshpilotError('exec_failed', `the encrypted attachment could not be decrypted: ${errInfo(err).message}`);
  }
}


/** The parts of matrix-bot-sdk's (internal) RustEngine that the session and SessionClient touch. */
export interface RustEngineInternals {
  machine?: CryptoMachine & {
    updateTrackedUsers(users: unknown[]): Promise<void>;
    getMissingSessions(users: unknown[]): Promise<unknown>;
    close?(): unknown;
  };
  lock: { acquire<T>(key: string, fn: () => Promise<T>): Promise<T> };
  run(): Promise<void>;
  runOnly(...types: number[]): Promise<void>;
  processKeysClaimRequest(request: unknown): Promise<void>;
  addTrackedUsers(userIds: string[]): Promise<void>;
  meshpilotFixed?: boolean;
  /** Set by the session's stop(): the machine is being closed, late membership events track nobody. */
  meshpilotClosed?: boolean;
}

// matrix-bot-sdk keeps its crypto objects private (MatrixClient.crypto, CryptoClient.engine.machine).
type WithCrypto = { crypto?: CryptoClientLike & { engine?: RustEngineInternals } };

/** The client's CryptoClient once it is ready, else undefined. */
export function readyCrypto(client: object): CryptoClientLike | undefined {
  const c = (client as WithCrypto).crypto;
  return c?.isReady ? c : undefined;
}

/** The client's crypto engine (prepared or not). */
export function cryptoEngine(client: object): RustEngineInternals | undefined {
  return (client as WithCrypto).crypto?.engine;
}

/** The engine's OlmMachine: cross-signing needs it. */
export function cryptoMachine(client: object): RustEngineInternals['machine'] {
  return cryptoEngine(client)?.machine;
}
