/**
 * The part of bots/matrix/ that never loads matrix-bot-sdk: raw homeserver calls (HomeserverApi),
 * account and Synapse admin helpers, the crypto device check and crypto module probes. The launcher
 * and the CLI import this where they need no session, so a command like `meshpilot audit verify` does
 * not parse the SDK. index.ts re-exports all of it beside the session.
 */
export { cryptoAvailable, cryptoBackendName } from './crypto.js';
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
