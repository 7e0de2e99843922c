/**
 * `key=value` arguments (CLI `meshpilot cap`, chat `!cap`), parsed by the capability's own schema:
 * numbers, booleans, arrays as a,b,c, records as k=v,k2=v2. Values are then validated by invoke().
 */
import { z } from 'zod';
import type { AnyCapability } from './capability.js';
import { toJsonSchema } from './capability.js';

export type ParsedArgs = { ok: true; args: Record<string, unknown> } | { ok: false; message: string };

function unwrap(s: z.ZodType): z.ZodType {
  let t: z.ZodType = s;
  while (t instanceof z.ZodOptional || t instanceof z.ZodDefault || t instanceof z.ZodNullable) t = t.unwrap() as z.ZodType;
  return t;
}

function shapeOf(def: AnyCapability): Record<string, z.ZodType> {
  const input = unwrap(def.input);
  return input instanceof z.ZodObject ? (input.shape as Record<string, z.ZodType>) : {};
}

/** A string from chat or the command line, turned into what the field's schema expects (then validated). */
export function coerceArg(schema: z.ZodType, raw: string): unknown {
  return convert(schema, raw);
}

function convert(schema: z.ZodType, raw: string): unknown {
  const t = unwrap(schema);
  if (t instanceof z.ZodNumber) {
    const n = Number(raw);
    return raw.trim() !== '' && Number.isFinite(n) ? n : raw;
  }
  if (t instanceof z.ZodBoolean) {
    if (/^(true|yes|1|on)$/i.test(raw)) return true;
    if (/^(false|no|0|off)$/i.test(raw)) return false;
    return raw;
  }
  if (t instanceof z.ZodArray) {
    if (raw.startsWith('[')) {
      try { return JSON.parse(raw) as unknown; } catch { /* fall through to a,b,c */ }
    }
    const element = t.element as z.ZodType;
    return raw === '' ? [] : raw.split(',').map((item) => convert(element, item));
  }
  if (t instanceof z.ZodRecord) {
    const out: Record<string, string> = {};
    for (const pair of raw.split(',')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) return raw;
      out[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    return out;
  }
  return raw;
}

export function parseKeyValues(def: AnyCapability, pairs: readonly string[]): ParsedArgs {
  const shape = shapeOf(def);
  const args: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) return { ok: false, message: `expected key=value, got "${pair}" (arguments of ${def.name}: ${Object.keys(shape).join(', ') || 'none'})` };
    const key = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    const field = shape[key];
    if (!field) return { ok: false, message: `${def.name} has no argument "${key}" (arguments: ${Object.keys(shape).join(', ') || 'none'})` };
    if (key in args) return { ok: false, message: `argument "${key}" given twice` };
    args[key] = convert(field, value);
  }
  return { ok: true, args };
}

/** One line per argument: `path (string, required) — the file to read`. */
export function describeArgs(def: AnyCapability): string[] {
  const js = toJsonSchema(def) as { properties?: Record<string, { type?: string; description?: string; default?: unknown; enum?: unknown[] }>; required?: string[] };
  const required = new Set(js.required ?? []);
  return Object.entries(js.properties ?? {}).map(([name, p]) => {
    const type = p.enum ? p.enum.join('|') : (p.type ?? 'value');
    const flags = [type, required.has(name) ? 'required' : p.default !== undefined ? `default ${JSON.stringify(p.default)}` : 'optional'];
    return `${name} (${flags.join(', ')})${p.description ? ` — ${p.description}` : ''}`;
  });
}
