// @ts-check
// meshpilot's stand-in for @matrix-org/matrix-sdk-crypto-nodejs (package.json `overrides`): the real
// package downloads a native binary in postinstall, which fails offline and then breaks
// `import "matrix-bot-sdk"`. matrix-bot-sdk require()s this module synchronously; it exports, in order:
//   1. MESHPILOT_MATRIX_E2EE=off → the stub (every export throws; __meshpilotCryptoAvailable false);
//   2. the native module, unchanged, if MESHPILOT_MATRIX_CRYPTO_MODULE or
//      @matrix-org/matrix-sdk-crypto-nodejs-real loads (__meshpilotBackend 'native');
//   3. the WebAssembly adapter (./wasm-adapter.cjs: the subset of the native API matrix-bot-sdk uses,
//      store persisted to a file; __meshpilotBackend 'wasm');
//   4. the stub, when the wasm package cannot load (__meshpilotUnavailableReason says why).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { createStub } = require('./stub.cjs');

/** @returns {Record<string, unknown> | null} */
function loadNative() {
  const candidates = [process.env.MESHPILOT_MATRIX_CRYPTO_MODULE, '@matrix-org/matrix-sdk-crypto-nodejs-real'].filter(Boolean);
  for (const name of /** @type {string[]} */ (candidates)) {
    try {
      return require(name);
    } catch {
      // not installed, or its native binary is missing: try the next one
    }
  }
  return null;
}

/** @returns {Record<string, unknown>} */
function choose() {
  if ((process.env.MESHPILOT_MATRIX_E2EE ?? '').toLowerCase() === 'off') return createStub('disabled by MESHPILOT_MATRIX_E2EE=off');
  const native = loadNative();
  if (native) {
    native.__meshpilotCryptoAvailable = true;
    native.__meshpilotBackend = 'native';
    return native;
  }
  try {
    // the bindings load the .wasm file only on first use: check it is there now, not mid-conversation
    const wasmFile = path.join(path.dirname(require.resolve('@matrix-org/matrix-sdk-crypto-wasm')), 'pkg', 'matrix_sdk_crypto_wasm_bg.wasm');
    if (!fs.existsSync(wasmFile)) throw new Error(`${wasmFile} is missing`);
    const adapter = require('./wasm-adapter.cjs');
    const { __internal, ...api } = adapter; // __internal: test hooks, not part of the module's API
    return { ...api, __meshpilotCryptoAvailable: true, __meshpilotBackend: 'wasm' };
  } catch (e) {
    return createStub(`neither the native crypto module nor @matrix-org/matrix-sdk-crypto-wasm loads (${e instanceof Error ? e.message : String(e)})`);
  }
}

module.exports = choose();
