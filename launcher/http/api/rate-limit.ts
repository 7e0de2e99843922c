/**
 * Token buckets, one per key (an API token, a client address), in memory. A bucket holds `count`
 * requests and refills `count` per `windowS`. The answer carries what the RateLimit headers need
 * (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "name";q=60;w=60`, `RateLimit: "name";r=59;t=1`).
 */
export interface Take {
  ok: boolean;
  /** Whole requests left now. */
  remaining: number;
  /** Seconds until the bucket is full again. */
  resetS: number;
  /** Seconds until the next request is allowed (0 when ok). */
  retryAfterS: number;
}

interface Bucket { tokens: number; at: number }

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly maxKeys = 10_000, private readonly now: () => number = Date.now) {}

  /** Takes one request from the key's bucket (`peek`: only looks). */
  take(key: string, count: number, windowS: number, opts: { peek?: boolean } = {}): Take {
    const now = this.now();
    const perMs = count / (windowS * 1000);
    let b = this.buckets.get(key);
    if (b) {
      b.tokens = Math.min(count, b.tokens + (now - b.at) * perMs);
      b.at = now;
      // most recently used last: the first keys are the ones to evict
      this.buckets.delete(key);
      this.buckets.set(key, b);
    } else {
      b = { tokens: count, at: now };
      this.buckets.set(key, b);
      if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
    }
    const ok = b.tokens >= 1;
    if (ok && !opts.peek) b.tokens -= 1;
    return {
      ok,
      remaining: Math.floor(b.tokens),
      resetS: Math.ceil((count - b.tokens) / perMs / 1000),
      retryAfterS: ok ? 0 : Math.max(1, Math.ceil((1 - b.tokens) / perMs / 1000)),
    };
  }

  forget(key: string): void {
    this.buckets.delete(key);
  }
}

export function rateLimitHeaders(policy: string, count: number, windowS: number, t: Take): Record<string, string> {
  const h: Record<string, string> = {
    'RateLimit-Policy': `"${policy}";q=${count};w=${windowS}`,
    'RateLimit': `"${policy}";r=${t.remaining};t=${t.resetS}`,
  };
  if (!t.ok) h['Retry-After'] = String(t.retryAfterS);
  return h;
}
