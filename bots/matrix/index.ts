/**
 * meshpilot's Matrix layer, the one place that knows matrix-bot-sdk and the homeserver's HTTP API.
 * Callers import from here only; nothing outside bots/matrix/ imports matrix-bot-sdk
 * (test/matrix-boundary.test.ts).
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
export { cryptoAvailable, cryptoBackendName } from './crypto.js';
export { FileCryptoStorage } from './crypto-storage.js';
export { checkCryptoDevice } from './crypto-device.js';
export {
  adminLookupUser,
  deactivateUser,
  homeserverVersions,
  isUserInUse,
  loginWithPassword,
  reactivateUser,
  registerWithSharedSecret,
  setDisplayNameWithToken,
  whoamiWithToken,
} from './admin.js';
export { HomeserverApi } from './http.js';
