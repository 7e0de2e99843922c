// @ts-check
// The crypto module when end-to-end encryption is unavailable: every export throws when used, so
// `import "matrix-bot-sdk"` still works and the bots run without encryption.
'use strict';

/**
 * @param {string} reason why encryption is unavailable (shown in the error and as __meshpilotUnavailableReason)
 * @returns {Record<string, unknown>}
 */
function createStub(reason) {
  // a function (not an arrow) so that `new Export()` reaches the construct trap
  const unavailable = function () {
    throw new Error(`Matrix end-to-end encryption is not available: ${reason}`);
  };
  /** @type {ProxyHandler<any>} -- any: the proxy stands in for every export */
  const handler = {
    get: (_t, prop) => {
      if (prop === '__meshpilotCryptoAvailable') return false;
      if (prop === '__meshpilotBackend') return 'none';
      if (prop === '__meshpilotUnavailableReason') return reason;
      if (prop === '__esModule') return false;
      if (prop === 'then' || typeof prop === 'symbol') return undefined; // not a thenable, not iterable
      return new Proxy(unavailable, handler);
    },
    construct: unavailable,
    apply: unavailable,
  };
  return new Proxy({}, handler);
}

module.exports = { createStub };
