/**
 * `/v1` authentication and rate limits, before any route:
 * - `Authorization: Bearer mp_…` verified by the TokenStore (constant-time hash comparison);
 * - failed authentications limited per client address (`http.auth_failures_per_min`): past it, 429
 *   before the token is even looked at;
 * - a token bucket per token (its `--rate`): 429 with Retry-After; every answer carries
 *   RateLimit-Policy and RateLimit.
 */
import type { MiddlewareHandler } from 'hono';
import { httpError } from '../errors.js';
import type { HttpVars } from '../types.js';
import type { ApiPrincipal, TokenStore, VerifyFailure } from '../tokens.js';
import { RateLimiter, rateLimitHeaders } from './rate-limit.js';

export type ApiEnv = { Variables: HttpVars & { principal: ApiPrincipal } };

const WHY: Record<VerifyFailure | 'missing', string> = {
  missing: 'send the token as `Authorization: Bearer mp_…` (create one with `meshpilot token create`)',
  malformed: 'that is not a meshpilot API token',
  unknown: 'unknown token',
  revoked: 'this token was revoked',
  expired: 'this token has expired',
};

export function authMiddleware(tokens: TokenStore, opts: { authFailuresPerMin: number; limiter?: RateLimiter; failures?: RateLimiter }): MiddlewareHandler<ApiEnv> {
  const limiter = opts.limiter ?? new RateLimiter();
  const failures = opts.failures ?? new RateLimiter();
  const failN = opts.authFailuresPerMin;
  return async (c, next) => {
    const addr = c.get('clientAddress') ?? 'unknown';
    const pre = failures.take(addr, failN, 60, { peek: true });
    if (!pre.ok) {
      c.header('Retry-After', String(pre.retryAfterS));
      return httpError(c, 'rate_limited', `too many failed authentications from ${addr}; retry in ${pre.retryAfterS} s`);
    }
    const header = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(\S{1,200})$/i.exec(header);
    const v = m ? tokens.verify(m[1]!) : undefined;
    if (!v || !v.ok) {
      failures.take(addr, failN, 60);
      c.header('WWW-Authenticate', 'Bearer realm="meshpilot"');
      return httpError(c, 'auth', WHY[v ? v.reason : 'missing']);
    }
    const p = v.principal;
    const t = limiter.take(`token:${p.id}`, p.rate.count, p.rate.windowS);
    for (const [k, val] of Object.entries(rateLimitHeaders(`token-${p.prefix}`, p.rate.count, p.rate.windowS, t))) c.header(k, val);
    if (!t.ok) return httpError(c, 'rate_limited', `token ${p.name} is over its rate of ${p.rate.count} per ${p.rate.windowS} s; retry in ${t.retryAfterS} s`);
    c.set('principal', p);
    await next();
  };
}
