/**
 * Injected into the device bot bundle (launcher/bundle.ts, esbuild `inject`): bundled code that names
 * one of these globals gets the export below instead. The Anthropic SDK builds its request headers with
 * `new Headers()` and tests `body instanceof FormData`; with these, nothing in a bot process touches
 * Node's fetch globals, whose first use loads Node's bundled undici (8 MB per bot, see bots/http.ts).
 * Only the bundle is affected; code run from source (tests, tsx) keeps the real globals.
 */
import { HttpHeaders } from './http.js';

export { HttpHeaders as Headers };

/** A bot never sends forms: `x instanceof FormData` is false, and constructing one says why. */
export class FormData {
  constructor() {
    throw new TypeError('FormData is not available in the meshpilot device bot (see bots/bundle-globals.ts)');
  }
}
