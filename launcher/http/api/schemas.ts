/**
 * The `/v1` API's request and response shapes, declared once: the handlers validate requests with
 * them, the types come from them, and GET /v1/openapi.json is generated from them (openapi.ts).
 */
import { z } from 'zod';
import { CapabilityResultSchema } from '../../../capabilities/capability.js';
import { AuditEntrySchema, DecisionSchema } from '../../../capabilities/audit.js';
import { DeviceNameSchema } from '../../../capabilities/manifest.js';
import { HttpErrorSchema } from '../errors.js';

export { HttpErrorSchema };

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/);
export const AuditRefSchema = z.object({ seq: z.number().int(), hash: Hex64 }).meta({ id: 'AuditRef' });
const ApprovalId = z.string().regex(/^ap_[A-Za-z0-9_-]{16,32}$/);

export const ExecRequestSchema = z.object({
  device: DeviceNameSchema,
  capability: z.string().regex(/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/, 'must be a capability name like sys.info').max(64),
  args: z.record(z.string(), z.unknown()).default({}),
  /** When the call needs approval: wait up to this many seconds for the verdict before answering 202. */
  wait: z.number().int().min(0).max(300).default(0),
}).strict().meta({ id: 'ExecRequest' });

export const ExecResultSchema = z.object({
  ok: z.boolean(),
  device: z.string(),
  capability: z.string(),
  decision: DecisionSchema,
  result: CapabilityResultSchema.optional(),
  error: HttpErrorSchema.optional(),
  /** The audit entry recording this outcome. */
  audit: AuditRefSchema.nullable(),
  /** A mesh device's agent's own entry. */
  device_audit: AuditRefSchema.optional(),
}).meta({ id: 'ExecResult' });

/** A call invoke refused (bad args, denied, rejected, unknown device): the error shape plus the outcome and its audit entry. */
export const ExecRefusalSchema = ExecResultSchema.extend({ code: z.string().max(64), message: z.string().max(4000) }).meta({ id: 'ExecRefusal' });
/** 400/403/404 of /v1/exec: a refusal before invoke (bad body, scopes) or by invoke. */
export const ExecErrorSchema = z.union([HttpErrorSchema, ExecRefusalSchema]).meta({ id: 'ExecError' });

export const ApprovalStateSchema = z.enum(['pending', 'approved', 'rejected']);

export const ApprovalSchema = z.object({
  id: ApprovalId,
  state: ApprovalStateSchema,
  device: z.string(),
  capability: z.string(),
  actor: z.string(),
  created_at: z.string(),
  /** The request's id in the operators' DM ([a1b2c3]) once the bot posted it. */
  chat_id: z.string().nullable(),
  decided_by: z.string().nullable(),
  /** Set when the call has finished (after approval: its result; after rejection: the refusal). */
  result: z.union([ExecResultSchema, ExecRefusalSchema]).nullable(),
}).meta({ id: 'Approval' });

export const ExecAcceptedSchema = z.object({
  approval: ApprovalSchema,
  /** Where to poll: GET it (with ?wait=<s> to wait). */
  poll: z.string(),
}).meta({ id: 'ExecAccepted' });

export const ApprovalQuerySchema = z.object({
  wait: z.coerce.number().int().min(0).max(300).default(0),
});

export const DeviceSummarySchema = z.object({
  name: z.string(),
  valid: z.boolean(),
  os: z.string().nullable(),
  transport: z.string().nullable(),
  capabilities: z.number().int(),
  /** The health monitor's verdict (online, stale, unreachable, offline, corrupted) when it has one. */
  health: z.string().nullable(),
  /** The device bot's supervisor state (running, failed…), null when no bots run. */
  bot: z.string().nullable(),
}).meta({ id: 'DeviceSummary' });

export const DeviceListSchema = z.object({ devices: z.array(DeviceSummarySchema) }).meta({ id: 'DeviceList' });

export const DeviceDetailSchema = DeviceSummarySchema.extend({
  issues: z.array(z.string()),
  manifest: z.object({
    capabilities: z.array(z.object({ name: z.string(), risk: z.string(), approval: z.boolean() })),
    operators: z.array(z.string()),
  }).nullable(),
  health_detail: z.object({ since: z.string(), detail: z.string(), last_ok: z.string().nullable() }).nullable(),
  bot_detail: z.object({ state: z.string(), pid: z.number().int().nullable(), restarts: z.number().int(), since: z.string(), busy: z.boolean() }).nullable(),
  audit_head: AuditRefSchema.nullable(),
}).meta({ id: 'DeviceDetail' });

export const AuditQuerySchema = z.object({
  device: z.union([DeviceNameSchema, z.literal('_api')]),
  after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export const AuditPageSchema = z.object({
  device: z.string(),
  entries: z.array(AuditEntrySchema),
  /** Pass as `after` for the next page; null at the end. */
  next_after: z.number().int().nullable(),
}).meta({ id: 'AuditPage' });

export const ChainVerifySchema = z.object({
  device: z.string(),
  ok: z.boolean(),
  count: z.number().int(),
  head: AuditRefSchema.nullable(),
  bad_seq: z.number().int().optional(),
  reason: z.string().optional(),
  /** The head anchored in Matrix: matched, mismatch (rewritten), unchecked (unreadable), none. */
  anchor: z.object({ kind: z.enum(['matched', 'mismatch', 'unchecked', 'none']), seq: z.number().int().optional(), message: z.string().optional() }),
}).meta({ id: 'ChainVerify' });

export const AuditVerifySchema = z.object({ ok: z.boolean(), chains: z.array(ChainVerifySchema) }).meta({ id: 'AuditVerify' });

export const AddDeviceRequestSchema = z.object({
  name: DeviceNameSchema,
  via: z.enum(['wg', 'ssh']),
  ssh: z.string().min(1).max(300).regex(/^[A-Za-z0-9@._:[\]-]+$/, 'must be an ssh alias or user@host[:port]'),
  accept_host_key: z.string().regex(/^SHA256:[A-Za-z0-9+/=]{20,64}$/).optional(),
  profile: z.enum(['readonly', 'operator']).optional(),
  dry_run: z.boolean().optional(),
}).strict().meta({ id: 'AddDeviceRequest' });

export const RevokeQuerySchema = z.object({ confirm: z.string().max(64) });
export const RevokeResultSchema = z.object({ ok: z.boolean(), device: z.string(), status: z.string(), message: z.string() }).meta({ id: 'RevokeResult' });

export const HealthSchema = z.object({ ok: z.literal(true) }).meta({ id: 'Health' });
