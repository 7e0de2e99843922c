/**
 * The agent's HTTP protocol (v1), validated with zod on both sides.
 *
 *   GET  /health                       unauthenticated; HealthResponse
 *   POST /v1/invoke   InvokeBody       signed; InvokeResponse (200 when the capability ran,
 *                                      400 invalid request, 403 denied / not approved)
 *   GET  /v1/audit?after=SEQ&limit=N   signed; AuditPage
 * Errors: { error: { code, message } } with a matching HTTP status.
 */
import { z } from 'zod';
import { AuditEntrySchema, DecisionSchema } from '../audit.js';
import { CapabilityResultSchema } from '../capability.js';

export const PROTOCOL_VERSION = 1;
const Hex64 = z.string().regex(/^[0-9a-f]{64}$/);

export const InvokeBodySchema = z.object({
  capability: z.string().min(1).max(64),
  args: z.record(z.string(), z.unknown()).default({}),
  actor: z.string().min(1).max(256),
  request_id: z.string().min(1).max(128),
  /** Who approved the call on the controller; only meaningful on an authenticated request. */
  approved_by: z.string().min(1).max(256).optional(),
}).strict();
export type InvokeBody = z.infer<typeof InvokeBodySchema>;

export const WireErrorSchema = z.object({ code: z.string().max(64), message: z.string().max(4000) });
export type WireError = z.infer<typeof WireErrorSchema>;

export const WireInvokeResultSchema = z.object({
  ok: z.boolean(),
  device: z.string().max(64),
  capability: z.string().max(64),
  decision: DecisionSchema,
  result: CapabilityResultSchema.optional(),
  error: WireErrorSchema.optional(),
  audit: z.object({ seq: z.number().int(), hash: Hex64 }).nullable(),
});
export type WireInvokeResult = z.infer<typeof WireInvokeResultSchema>;

export const InvokeResponseSchema = z.object({
  invoke: WireInvokeResultSchema.optional(),
  error: WireErrorSchema.optional(),
});

export const ErrorResponseSchema = z.object({ error: WireErrorSchema });

export const HealthResponseSchema = z.object({
  ok: z.boolean(),
  agent: z.literal('meshpilot-agent'),
  protocol: z.number().int(),
  version: z.string().max(64),
  device: z.string().max(64),
  os: z.enum(['linux', 'darwin', 'windows']),
  home: z.string().max(1024),
  uptime_s: z.number(),
  time: z.string().max(40),
  manifest: z.object({ sha256: Hex64.nullable(), valid: z.boolean(), error: z.string().max(4000).optional() }),
  audit: z.object({
    seq: z.number().int(),
    hash: Hex64.nullable(),
    chain_ok: z.boolean(),
    checked_at: z.string().max(40),
    bad_seq: z.number().int().optional(),
    reason: z.string().max(1000).optional(),
  }),
});
export type HealthResponse = z.infer<typeof HealthResponseSchema>;

export const AuditPageSchema = z.object({
  device: z.string().max(64),
  head: z.object({ seq: z.number().int(), hash: Hex64 }).nullable(),
  entries: z.array(AuditEntrySchema).max(10_000),
});
export type AuditPage = z.infer<typeof AuditPageSchema>;
