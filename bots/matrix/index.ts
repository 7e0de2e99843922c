/**
 * meshpilot's Matrix layer, the one place that knows matrix-bot-sdk and the homeserver's HTTP API.
 * Callers import from here (or from homeserver.ts, the part that does not load matrix-bot-sdk);
 * nothing outside bots/matrix/ imports matrix-bot-sdk (test/matrix-boundary.test.ts).
 */
export { createMatrixSession } from './session.js';
export type {
  CreateRoomOptions,
  DownloadedMedia,
  EncryptionStatus,
  MatrixEncrypted,
  MatrixInvite,
  MatrixMessage,
  MatrixReaction,
  MatrixSession,
  MatrixSessionOptions,
  MediaInfo,
  RelatesTo,
  SessionStatus,
  StateEvent,
} from './types.js';
export type { EncryptedFile } from './events.js';
export { FileCryptoStorage } from './crypto-storage.js';
export * from './homeserver.js';
