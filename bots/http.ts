/**
 * The bot process's HTTP client, on node:http / node:https: one keep-alive agent per scheme, a request
 * sent again when its pooled socket turns out closed, bounded response bodies, and `httpFetch`, the part
 * of WHATWG fetch that meshpilot's own calls and the Anthropic SDK use (bots/llm.ts passes it as the
 * SDK's `fetch`; the bot bundle maps the SDK's `Headers` to HttpHeaders, launcher/bundle.ts).
 *
 * Why not the global fetch: in Node 20 the first use of fetch, Headers, Request, Response or FormData
 * loads Node's bundled undici, which loads http2, tls, zlib and perf_hooks with it: 8 MB more RSS in
 * every bot process (measured: `new Headers()` in a Node 20 process that has the bot's other built-ins
 * loaded adds 3.7 MB of anonymous memory and 4.6 MB of the node binary's pages). The bot has node:http
 * for Matrix anyway, so this client costs next to nothing.
 *
 * Differences from fetch, on purpose: responses are never compressed (`accept-encoding: identity` is
 * always sent, so zlib never loads); request bodies are buffered (string, bytes, URLSearchParams; a
 * stream is refused with a TypeError); `timeoutMs` is an idle timeout of the socket (connecting and each
 * wait for data); `text()`, `json()` and `arrayBuffer()` refuse bodies over `maxBodyBytes` (64 MiB).
 */
import type { Agent, ClientRequest, IncomingMessage, OutgoingHttpHeaders, RequestOptions } from 'node:http';
import * as http from 'node:http';

/** Largest body `text()`, `json()` and `arrayBuffer()` read unless the request says otherwise. */
export const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_REDIRECTS = 20;

let agents: { http: Agent; https?: Agent } | undefined;
let httpsModule: typeof import('node:https') | undefined;

/** An Error with a Node-style `code` (ECONNRESET, ETIMEDOUT, E2BIG, EINVAL, …). */
export function codedError(message: string, code: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

async function transport(url: URL): Promise<{ request: typeof http.request; agent: Agent }> {
  agents ??= { http: new http.Agent({ keepAlive: true }) };
  if (url.protocol === 'http:') return { request: http.request, agent: agents.http };
  if (url.protocol === 'https:') {
    // Loaded on first use: a homeserver on loopback or behind plain HTTP never pays for TLS.
    httpsModule ??= await import('node:https');
    agents.https ??= new httpsModule.Agent({ keepAlive: true });
    return { request: httpsModule.request, agent: agents.https };
  }
  throw codedError(`unsupported URL scheme ${url.protocol}`, 'EINVAL');
}

// ---- one request ---------------------------------------------------------------------------------

/** Errors of a request whose kept-alive socket turned out closed before the server answered. */
const STALE_SOCKET_CODES = new Set(['ECONNRESET', 'EPIPE']);
/** Each stale pooled socket costs one retry; the pool holds at most a few per host. */
const MAX_STALE_RETRIES = 4;
type StaleSocketError = Error & { staleSocket?: boolean };

export interface SendOptions {
  method: string;
  headers: OutgoingHttpHeaders;
  body?: Buffer | undefined;
  /** Idle timeout of the socket (connecting and each wait for data); the request fails with ETIMEDOUT. */
  timeoutMs?: number | undefined;
  /** Aborting destroys the request (and the response body, once there) with the signal's reason. */
  signal?: AbortSignal | null | undefined;
}

function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new DOMException('This operation was aborted', 'AbortError');
}

function sendOnce(url: URL, o: SendOptions): Promise<IncomingMessage> {
  return transport(url).then(({ request, agent }) => new Promise<IncomingMessage>((resolve, reject) => {
    if (o.signal?.aborted) return reject(abortReason(o.signal));
    const headers = { ...o.headers };
    if (o.body !== undefined) headers['content-length'] = o.body.length;
    const opts: RequestOptions = { method: o.method, headers, agent };
    let req: ClientRequest;
    try {
      req = request(url, opts);
    } catch (err) {
      return reject(err as Error);
    }
    let answered = false;
    const onAbort = (): void => void req.destroy(abortReason(o.signal!));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    req.on('close', () => o.signal?.removeEventListener('abort', onAbort));
    if (o.timeoutMs !== undefined) {
      const ms = o.timeoutMs;
      req.setTimeout(ms, () => req.destroy(codedError(`${o.method} ${url.origin}${url.pathname} timed out after ${ms} ms`, 'ETIMEDOUT')));
    }
    req.on('error', (err: Error) => {
      if (answered) return; // the response stream reports it to whoever reads the body
      // A kept-alive socket the server closed while this request was on its way (its idle timer fired as
      // the request was written, likely on a busy machine) fails before any answer; the server never read
      // the request, so sending it again on a new socket is safe (Node's docs advise it).
      if (req.reusedSocket && STALE_SOCKET_CODES.has((err as NodeJS.ErrnoException).code ?? '')) (err as StaleSocketError).staleSocket = true;
      reject(err);
    });
    req.on('response', (res: IncomingMessage) => {
      answered = true;
      // An abort or timeout after the answer arrived ends the body with that error.
      req.on('error', (err) => res.destroy(err));
      resolve(res);
    });
    req.end(o.body);
  }));
}

/**
 * Sends one request and resolves with the response head (its body still to read). A request that fails
 * on a pooled socket the server had already closed is sent again on a new socket; any other failure
 * rejects (with a coded Error, or the signal's reason).
 */
export async function sendRequest(url: URL, o: SendOptions): Promise<IncomingMessage> {
  for (let stale = 0; ; stale++) {
    try {
      return await sendOnce(url, o);
    } catch (err) {
      if (!(err as StaleSocketError).staleSocket || stale >= MAX_STALE_RETRIES || o.signal?.aborted) throw err;
    }
  }
}

/** Reads a whole body, refusing (E2BIG) a declared or actual size over maxBytes; the stream is destroyed then. */
export async function readBody(res: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    res.destroy();
    throw codedError(`response of ${declared} bytes exceeds the ${maxBytes}-byte limit`, 'E2BIG');
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const c of res as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > maxBytes) throw codedError(`response exceeds the ${maxBytes}-byte limit`, 'E2BIG');
      chunks.push(c);
    }
  } catch (err) {
    res.destroy();
    throw err;
  }
  // A connection closed mid-body ends the iteration quietly on some Node versions: that is no answer.
  if (!res.complete) throw codedError('the server closed the connection mid-response', 'ECONNRESET');
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
}

// ---- Headers -------------------------------------------------------------------------------------

const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// eslint-disable-next-line no-control-regex
const BAD_VALUE_RE = /[\0\r\n]/;

/** What HttpHeaders (and fetch) accept as headers: another Headers-like iterable of pairs, pairs, or a record. */
export type HeadersInitLike = Iterable<readonly [string, string]> | Iterable<readonly string[]> | Record<string, string | readonly string[] | undefined> | null | undefined;

/**
 * WHATWG Headers: case-insensitive names, values combined with ", " on read (Set-Cookie kept apart,
 * getSetCookie), iteration sorted by name. Invalid names or values throw a TypeError, like Headers.
 */
export class HttpHeaders implements Iterable<[string, string]> {
  readonly #values = new Map<string, string[]>();

  constructor(init?: HeadersInitLike) {
    if (init === null || init === undefined) return;
    if (typeof (init as Iterable<unknown>)[Symbol.iterator] === 'function') {
      for (const pair of init as Iterable<readonly string[]>) {
        if (!pair || typeof pair === 'string' || pair.length !== 2) throw new TypeError('Headers: each header must be a [name, value] pair');
        this.append(pair[0]!, pair[1]!);
      }
      return;
    }
    if (typeof init !== 'object') throw new TypeError('Headers: expected an object, an array of pairs or Headers');
    for (const [name, value] of Object.entries(init)) {
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value) this.append(name, String(v));
      else this.append(name, String(value));
    }
  }

  static #name(name: string): string {
    const n = String(name);
    if (!TOKEN_RE.test(n)) throw new TypeError(`Headers: invalid header name ${JSON.stringify(n.slice(0, 64))}`);
    return n.toLowerCase();
  }

  static #value(value: string): string {
    const v = String(value).replace(/^[\t ]+|[\t ]+$/g, '');
    if (BAD_VALUE_RE.test(v)) throw new TypeError('Headers: a header value must not contain CR, LF or NUL');
    return v;
  }

  append(name: string, value: string): void {
    const n = HttpHeaders.#name(name);
    const v = HttpHeaders.#value(value);
    const list = this.#values.get(n);
    if (list) list.push(v);
    else this.#values.set(n, [v]);
  }

  set(name: string, value: string): void {
    this.#values.set(HttpHeaders.#name(name), [HttpHeaders.#value(value)]);
  }

  get(name: string): string | null {
    const list = this.#values.get(HttpHeaders.#name(name));
    return list ? list.join(', ') : null;
  }

  getSetCookie(): string[] {
    return [...(this.#values.get('set-cookie') ?? [])];
  }

  has(name: string): boolean {
    return this.#values.has(HttpHeaders.#name(name));
  }

  delete(name: string): void {
    this.#values.delete(HttpHeaders.#name(name));
  }

  forEach(cb: (value: string, name: string, headers: HttpHeaders) => void, thisArg?: unknown): void {
    for (const [name, value] of this) cb.call(thisArg, value, name, this);
  }

  *entries(): IterableIterator<[string, string]> {
    for (const name of [...this.#values.keys()].sort()) {
      const list = this.#values.get(name)!;
      if (name === 'set-cookie') for (const v of list) yield [name, v];
      else yield [name, list.join(', ')];
    }
  }

  *keys(): IterableIterator<string> {
    for (const [name] of this.entries()) yield name;
  }

  *values(): IterableIterator<string> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): IterableIterator<[string, string]> {
    return this.entries();
  }

  get [Symbol.toStringTag](): string {
    return 'Headers';
  }

  /** For node:http: lower-case names, Set-Cookie as an array. */
  toOutgoing(): OutgoingHttpHeaders {
    const out: OutgoingHttpHeaders = {};
    for (const [name, list] of this.#values) out[name] = name === 'set-cookie' ? [...list] : list.join(', ');
    return out;
  }
}

// ---- fetch ---------------------------------------------------------------------------------------

export interface HttpFetchInit {
  method?: string;
  headers?: HeadersInitLike;
  body?: string | Uint8Array | ArrayBuffer | URLSearchParams | null;
  signal?: AbortSignal | null;
  redirect?: 'follow' | 'manual' | 'error';
  /** Idle timeout of the socket in ms (see the module comment). */
  timeoutMs?: number;
  /** Limit for text() / json() / arrayBuffer() (default MAX_BODY_BYTES). */
  maxBodyBytes?: number;
  /** Accepted and ignored: fetch's options that mean nothing for this client (duplex, keepalive, …). */
  [other: string]: unknown;
}

/** Statuses whose response has no body (fetch's "null body status"). */
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/** The answer of httpFetch: fetch's Response with a Node stream as `body` (async-iterable, as the Anthropic SDK reads it). */
export class HttpResponse {
  readonly status: number;
  readonly statusText: string;
  readonly headers: HttpHeaders;
  readonly url: string;
  readonly redirected: boolean;
  readonly type = 'basic';
  /** null for HEAD and null-body statuses. */
  readonly body: (IncomingMessage & AsyncIterable<Buffer>) | null;
  readonly #maxBodyBytes: number;
  #used = false;

  constructor(res: IncomingMessage, o: { url: string; redirected: boolean; method: string; maxBodyBytes: number }) {
    this.status = res.statusCode ?? 0;
    this.statusText = res.statusMessage ?? '';
    const headers = new HttpHeaders();
    const raw = res.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      try {
        headers.append(raw[i]!, raw[i + 1]!);
      } catch {
        // a malformed header from the server is dropped, as fetch does
      }
    }
    this.headers = headers;
    this.url = o.url;
    this.redirected = o.redirected;
    this.#maxBodyBytes = o.maxBodyBytes;
    if (o.method === 'HEAD' || NULL_BODY_STATUSES.has(this.status)) {
      res.resume();
      this.body = null;
    } else {
      this.body = res as IncomingMessage & AsyncIterable<Buffer>;
    }
  }

  get ok(): boolean {
    return this.status >= 200 && this.status <= 299;
  }

  get bodyUsed(): boolean {
    return this.#used;
  }

  /** The whole body, at most `maxBytes` (default: the request's maxBodyBytes); over it: an E2BIG error. */
  async bytes(maxBytes: number = this.#maxBodyBytes): Promise<Buffer> {
    if (this.#used) throw new TypeError('Body has already been consumed');
    this.#used = true;
    if (!this.body) return Buffer.alloc(0);
    return readBody(this.body, maxBytes);
  }

  async arrayBuffer(): Promise<ArrayBuffer> {
    const b = await this.bytes();
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
  }

  async text(): Promise<string> {
    return (await this.bytes()).toString('utf8');
  }

  async json(): Promise<unknown> {
    return JSON.parse(await this.text()) as unknown;
  }

  /** Drops the body unread (frees the connection). */
  cancel(): void {
    this.#used = true;
    this.body?.destroy();
  }
}

function requestBody(body: HttpFetchInit['body'], headers: HttpHeaders): Buffer | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') {
    if (!headers.has('content-type')) headers.set('content-type', 'text/plain;charset=UTF-8');
    return Buffer.from(body, 'utf8');
  }
  if (body instanceof URLSearchParams) {
    if (!headers.has('content-type')) headers.set('content-type', 'application/x-www-form-urlencoded;charset=UTF-8');
    return Buffer.from(body.toString(), 'utf8');
  }
  if (body instanceof Uint8Array) return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  throw new TypeError('httpFetch: the request body must be a string, bytes or URLSearchParams (streams and forms are not supported)');
}

/**
 * fetch over node:http / node:https (see the module comment for what differs). Network failures reject
 * with a coded Error (ECONNREFUSED, ETIMEDOUT, …); an aborted signal rejects with its reason (an
 * AbortError DOMException by default).
 */
export async function httpFetch(input: string | URL | { url: string }, init: HttpFetchInit = {}): Promise<HttpResponse> {
  const href = typeof input === 'string' ? input : input instanceof URL ? input.href : input?.url;
  if (typeof href !== 'string') throw new TypeError('httpFetch: the input must be a URL string, a URL or a Request-like { url }');
  let url: URL;
  try {
    url = new URL(href);
  } catch {
    throw new TypeError(`httpFetch: invalid URL ${JSON.stringify(href.slice(0, 200))}`);
  }
  let method = (init.method ?? 'GET').toUpperCase();
  if (!TOKEN_RE.test(method)) throw new TypeError(`httpFetch: invalid method ${JSON.stringify(method.slice(0, 32))}`);
  const headers = new HttpHeaders(init.headers);
  let body = requestBody(init.body, headers);
  if (body !== undefined && (method === 'GET' || method === 'HEAD')) throw new TypeError(`httpFetch: a ${method} request cannot have a body`);
  if (!headers.has('accept')) headers.set('accept', '*/*');
  headers.set('accept-encoding', 'identity');
  const redirect = init.redirect ?? 'follow';
  const maxBodyBytes = init.maxBodyBytes ?? MAX_BODY_BYTES;
  const timeoutMs = typeof init.timeoutMs === 'number' && init.timeoutMs > 0 ? init.timeoutMs : undefined;
  for (let hop = 0; ; hop++) {
    const res = await sendRequest(url, { method, headers: headers.toOutgoing(), body, timeoutMs, signal: init.signal });
    const location = res.headers.location;
    if (redirect === 'manual' || ![301, 302, 303, 307, 308].includes(res.statusCode ?? 0) || !location) {
      return new HttpResponse(res, { url: url.href, redirected: hop > 0, method, maxBodyBytes });
    }
    res.resume(); // the redirect's own body is not wanted
    if (redirect === 'error') throw new TypeError(`httpFetch: ${url.href} redirects (to ${location.slice(0, 200)}) and redirect is "error"`);
    if (hop >= MAX_REDIRECTS) throw codedError(`httpFetch: more than ${MAX_REDIRECTS} redirects from ${href.slice(0, 200)}`, 'ETOOMANYREDIRECTS');
    let next: URL;
    try {
      next = new URL(location, url);
    } catch {
      throw codedError(`httpFetch: invalid redirect location ${JSON.stringify(location.slice(0, 200))}`, 'EINVAL');
    }
    // fetch's rules: 303 (and 301/302 after a POST) continue as a GET without a body.
    if ((res.statusCode === 303 && method !== 'HEAD') || ((res.statusCode === 301 || res.statusCode === 302) && method === 'POST')) {
      method = 'GET';
      body = undefined;
      for (const h of ['content-type', 'content-length', 'content-encoding', 'content-language', 'content-location']) headers.delete(h);
    }
    // Credentials do not follow to another origin.
    if (next.origin !== url.origin) headers.delete('authorization');
    url = next;
  }
}
