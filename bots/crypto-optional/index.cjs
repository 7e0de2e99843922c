// meshpilot's stand-in for @matrix-org/matrix-sdk-crypto-nodejs.
// The real package downloads a native binary in postinstall, which fails without internet and then
// breaks `import "matrix-bot-sdk"`. This shim keeps install and import working everywhere:
// if the real module is installed under MESHPILOT_MATRIX_CRYPTO_MODULE (or as
// @matrix-org/matrix-sdk-crypto-nodejs-real) and its binary loads, it is re-exported and the bots
// enable end-to-end encryption; otherwise every export is a stub that throws when used.
'use strict';

function loadReal() {
  const candidates = [process.env.MESHPILOT_MATRIX_CRYPTO_MODULE, '@matrix-org/matrix-sdk-crypto-nodejs-real'].filter(Boolean);
  for (const name of candidates) {
    try {
      return require(name);
    } catch {
      // not installed, or its native binary is missing: try the next one
    }
  }
  return null;
}

const real = loadReal();
if (real) {
  module.exports = real;
  module.exports.__meshpilotCryptoAvailable = true;
} else {
  const unavailable = () => {
    throw new Error('Matrix end-to-end encryption is not available: the native crypto module is not installed');
  };
  const handler = { get: (_t, prop) => (prop === '__meshpilotCryptoAvailable' ? false : prop === '__esModule' ? false : new Proxy(unavailable, handler)), construct: unavailable, apply: unavailable };
  module.exports = new Proxy({}, handler);
}
