/**
 * matrix-bot-sdk's HTTP layer without the deprecated `request` package.
 *
 * The SDK performs every request through one replaceable `request`-compatible function (setRequestFn):
 * `fn(params, callback(err, response, body))`. Its callers (lib/http.js doHttpRequest,
 * MatrixClient.uploadContentFromUrl) pass
 *   uri, method, qs (+ useQuerystring: Node's querystring format, arrays as repeated keys),
 *   headers, body (a JSON string or a Buffer), timeout (ms; null/undefined: none),
 *   encoding (undefined: the body is a utf-8 string; null: a Buffer, for media), forever (keep-alive)
 * and read response.statusCode, response.headers (lower-case names), response.body / body (string or
 * Buffer; the SDK parses JSON itself and turns non-2xx answers into MatrixError from the body).
 * installMatrixHttp() implements exactly that on bots/http.ts (node:http / node:https, keep-alive
 * agents, a request on a pooled socket the server had closed sent again), which keeps `request`'s
 * tree (request, psl, mime-db, ajv, sshpk, tough-cookie, …) out of the bot bundle.
 * node:http rather than the undici package: measured, a bundled undici (its JS plus llhttp WebAssembly)
 * costs each bot process ~20 MB more RSS than Node's built-in client with its native parser.
 *
 * Like `request`: GET/HEAD follow up to 10 redirects (Authorization is dropped when the host changes),
 * a timeout covers connecting and each wait for data (error code ETIMEDOUT), an empty body is '' (or an
 * empty Buffer). `json` (true or a body object) is honoured for other callers. Proxies are not supported
 * (the SDK's homeserver traffic never needed one). Responses are bounded (MAX_RESPONSE_BYTES).
 */
import type { IncomingHttpHeaders } from 'node:http';
import { stringify } from 'node:querystring';
import { setRequestFn } from 'matrix-bot-sdk';
import { codedError, readBody, sendRequest } from '../http.js';

/** The largest response body accepted (the SDK's own media and sync answers stay far below it). */
export const MAX_RESPONSE_BYTES = 128 * 1024 * 1024;
const MAX_REDIRECTS = 10;

/** What the SDK hands to its request function (the subset of `request`'s options it uses). */
export interface MatrixRequestParams {
  uri?: string;
  url?: string;
  method?: string;
  qs?: Record<string, unknown> | null;
  headers?: Record<string, string | number | string[] | undefined>;
  body?: string | Uint8Array | Record<string, unknown> | null;
  /** undefined: utf-8 string; null: Buffer; a name: string in that encoding. */
  encoding?: BufferEncoding | null;
  timeout?: number | null;
  json?: unknown;
}

/** The `request`-style response the SDK reads. */
export interface MatrixHttpResponse {
  statusCode: number;
  statusMessage: string;
  headers: IncomingHttpHeaders;
  body: unknown;
  /** The final URL (after redirects). */
  url: string;
}

export type MatrixRequestCallback = (err: Error | null, response?: MatrixHttpResponse, body?: unknown) => void;

function buildUrl(params: MatrixRequestParams): string {
  const base = params.uri ?? params.url;
  if (typeof base !== 'string' || base.length === 0) throw codedError('request without a URI', 'EINVAL');
  if (!params.qs || typeof params.qs !== 'object') return base;
  // Node's querystring, as `request` with useQuerystring: arrays become repeated keys.
  const query = stringify(params.qs as Parameters<typeof stringify>[0]);
  if (query === '') return base;
  return `${base}${base.includes('?') ? '&' : '?'}${query}`;
}

function requestBody(params: MatrixRequestParams, headers: Record<string, string | number | string[]>): Buffer | undefined {
  let body = params.body;
  const hasHeader = (name: string): boolean => Object.keys(headers).some((k) => k.toLowerCase() === name);
  if (params.json !== undefined && params.json !== false) {
    if (!hasHeader('accept')) headers['accept'] = 'application/json';
    if (params.json !== true && body === undefined) body = params.json as Record<string, unknown>;
    if (body !== undefined && body !== null && typeof body === 'object' && !(body instanceof Uint8Array)) {
      body = JSON.stringify(body);
      if (!hasHeader('content-type')) headers['content-type'] = 'application/json';
    }
  }
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  throw codedError('request body must be a string or a Buffer (or use json)', 'EINVAL');
}

function decodeBody(raw: Buffer, params: MatrixRequestParams): unknown {
  let body: unknown = params.encoding === null ? raw : raw.toString(params.encoding ?? 'utf8');
  if (params.json !== undefined && params.json !== false && typeof body === 'string' && body !== '') {
    try {
      body = JSON.parse(body);
    } catch {
      // `request` leaves a non-JSON body as it is
    }
  }
  return body;
}

interface Attempt {
  status: number;
  statusMessage: string;
  headers: IncomingHttpHeaders;
  raw: Buffer;
}

async function once(url: URL, method: string, headers: Record<string, string | number | string[]>, body: Buffer | undefined, timeout: number | undefined): Promise<Attempt> {
  const res = await sendRequest(url, { method, headers, body, timeoutMs: timeout });
  const raw = await readBody(res, MAX_RESPONSE_BYTES);
  return { status: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', headers: res.headers, raw };
}

async function perform(params: MatrixRequestParams): Promise<MatrixHttpResponse> {
  const method = (params.method ?? 'GET').toUpperCase();
  const headers: Record<string, string | number | string[]> = {};
  for (const [k, v] of Object.entries(params.headers ?? {})) if (v !== undefined) headers[k] = v;
  const body = requestBody(params, headers);
  const timeout = typeof params.timeout === 'number' && params.timeout > 0 ? params.timeout : undefined;
  let url = new URL(buildUrl(params));
  for (let hop = 0; ; hop++) {
    const a = await once(url, method, headers, body, timeout);
    const location = a.headers.location;
    if ((method === 'GET' || method === 'HEAD') && [301, 302, 303, 307, 308].includes(a.status) && location && hop < MAX_REDIRECTS) {
      const next = new URL(location, url);
      if (next.host !== url.host) for (const k of Object.keys(headers)) if (k.toLowerCase() === 'authorization') delete headers[k];
      url = next;
      continue;
    }
    return { statusCode: a.status, statusMessage: a.statusMessage, headers: a.headers, body: decodeBody(a.raw, params), url: url.href };
  }
}

/** The `request`-compatible function (exported for tests). */
export function matrixRequest(params: MatrixRequestParams, callback: MatrixRequestCallback): void {
  let p: Promise<MatrixHttpResponse>;
  try {
    p = perform(params);
  } catch (err) {
    p = Promise.reject(err as Error);
  }
  p.then(
    (res) => callback(null, res, res.body),
    (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
  );
}

let installed = false;
/** Routes all of matrix-bot-sdk's HTTP through matrixRequest. Idempotent. */
export function installMatrixHttp(): void {
  if (installed) return;
  installed = true;
  setRequestFn(matrixRequest);
}
