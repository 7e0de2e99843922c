/** Request bodies and queries through their zod schemas: a bad one is 400 {code: 'usage', message}. */
import type { Context } from 'hono';
import type { z } from 'zod';
import { httpError } from '../errors.js';

function issueText(err: z.ZodError): string {
  const i = err.issues[0]!;
  return `${i.path.length ? `${i.path.join('.')}: ` : ''}${i.message}`.slice(0, 500);
}

export async function jsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<{ ok: true; data: z.output<S> } | { ok: false; res: Response }> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    return { ok: false, res: httpError(c, 'usage', 'the body must be a JSON object (Content-Type: application/json)') };
  }
  const r = schema.safeParse(raw);
  return r.success ? { ok: true, data: r.data } : { ok: false, res: httpError(c, 'usage', `bad body: ${issueText(r.error)}`) };
}

export function query<S extends z.ZodType>(c: Context, schema: S): { ok: true; data: z.output<S> } | { ok: false; res: Response } {
  const r = schema.safeParse(c.req.query());
  return r.success ? { ok: true, data: r.data } : { ok: false, res: httpError(c, 'usage', `bad query: ${issueText(r.error)}`) };
}
