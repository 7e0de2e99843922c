/**
 * Device manifests: what a device may do. YAML, validated with zod; errors name the file, the line
 * and the field. The schema of each capability's options is derived from its declaration (scope).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { isMap, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { z } from 'zod';
import type { AnyCapability, Risk } from './capability.js';
import { MeshpilotError } from './errors.js';
import { LevelSchema, type Level } from './levels.js';
import { builtinRegistry, type CapabilityRegistry } from './registry.js';

import { DeviceNameSchema } from './names.js';
import { VmNameSchema } from './vm/args.js';
export { DEVICE_NAME, DeviceNameSchema } from './names.js';
export const OsSchema = z.enum(['linux', 'darwin', 'windows']);
export type DeviceOs = z.infer<typeof OsSchema>;
export const ApprovalSchema = z.enum(['never', 'risky', 'always']);
export type Approval = z.infer<typeof ApprovalSchema>;

const PATH_PATTERN_MSG = 'must be an absolute path or ~/… (or **/… for "anywhere")';
/** Absolute POSIX (`/…`), home-relative (`~`, `~/…`), Windows drive (C:\… or C:/…), or "anywhere" patterns starting with two stars and a slash. */
export const PathPatternSchema = z.string().min(1).max(1024).refine(
  (p) => !p.includes('\0') && (p.startsWith('/') || p === '~' || p.startsWith('~/') || p.startsWith('**/') || /^[A-Za-z]:[\\/]/.test(p)),
  PATH_PATTERN_MSG,
);
const NameGlob = z.string().min(1).max(256);

/**
 * A workspace's manifest (capabilities/workspace/derive.ts) says what it is: the device it runs on,
 * its home there, its role (the bot's instructions), model, parent in the org tree and the template
 * that created it (null: by hand). A device manifest has no such section.
 */
export const WorkspaceSectionSchema = z.object({
  host: DeviceNameSchema.describe('the device the workspace runs on'),
  home: z.string().min(1).max(1024),
  vm: DeviceNameSchema.optional().describe('the VM of the host device the workspace lives in (its home is inside it)'),
  role: z.string().min(1).max(8000),
  model: z.string().min(1).max(200).optional(),
  parent: DeviceNameSchema.nullable().default(null),
  template: z.string().max(64).nullable().default(null),
}).strict();
export type WorkspaceSection = z.infer<typeof WorkspaceSectionSchema>;

const LocalTransportSchema = z.object({ kind: z.literal('local') }).strict();
const SshTransportSchema = z.object({
  kind: z.literal('ssh'),
  host: z.string().min(1).max(255).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  user: z.string().min(1).max(64).optional(),
  key: z.string().min(1).max(1024).optional().describe('private key file on the controller'),
  alias: z.string().min(1).max(255).optional().describe('a Host alias from ~/.ssh/config'),
  trust_on_first_use: z.boolean().optional(),
}).strict().refine((t) => t.host !== undefined || t.alias !== undefined, 'an ssh transport needs host or alias');

const VIA_KINDS = 'a workspace in a VM needs its device reached over local or ssh';

export const TransportSchema = z.discriminatedUnion('kind', [
  LocalTransportSchema,
  SshTransportSchema,
  z.object({
    kind: z.literal('mesh'),
    address: z.string().min(1).max(64).describe("the device's mesh (WireGuard) IP"),
    port: z.number().int().min(1).max(65535).default(7420),
  }).strict(),
  // Capabilities run inside the device's VM `mp-<vm>` (capabilities/transports/vm.ts), the device reached through `via`.
  z.object({
    kind: z.literal('vm'),
    vm: VmNameSchema,
    via: z.discriminatedUnion('kind', [LocalTransportSchema, SshTransportSchema], {
      error: (iss) => (iss.code === 'invalid_union' ? VIA_KINDS : undefined),
    }).default({ kind: 'local' }).describe("how the VM's device is reached: { kind: local } (default) or an ssh transport"),
  }).strict(),
]);
export type TransportConfig = z.infer<typeof TransportSchema>;

export const LimitsSchema = z.object({
  timeout_s: z.number().int().min(1).max(3600).default(30),
  max_output_bytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(65536),
}).strict();

const CommonOptions = {
  approval: ApprovalSchema.optional(),
  timeout_s: z.number().int().min(1).max(3600).optional(),
  max_output_bytes: z.number().int().min(1024).max(16 * 1024 * 1024).optional(),
  /** The trust levels this capability is granted to (capabilities/levels.ts); default operator and admin. */
  tiers: z.array(LevelSchema).min(1).max(4).optional(),
};

/** The manifest options a capability accepts, derived from what its scope constrains. */
export function capabilityOptionsSchema(def: AnyCapability) {
  const scope = def.scope;
  if (!scope) return z.object(CommonOptions).strict();
  switch (scope.kind) {
    case 'paths':
      return z.object({
        ...CommonOptions,
        paths_allowed: z.array(PathPatternSchema).min(1, `${def.name} needs paths_allowed`).max(256),
        paths_denied: z.array(PathPatternSchema).max(256).optional(),
      }).strict();
    case 'binary':
      return z.object({
        ...CommonOptions,
        binaries: z.array(z.string().min(1).max(1024)).min(1, `${def.name} needs binaries`).max(512),
        paths_allowed: z.array(PathPatternSchema).max(256).optional().describe('where cwd may point'),
        paths_denied: z.array(PathPatternSchema).max(256).optional(),
        env_allowed: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/)).max(64).optional(),
      }).strict();
    case 'eval':
      return z.object({
        ...CommonOptions,
        enabled: z.literal(true, `${def.name} stays disabled unless the manifest says enabled: true`),
        paths_allowed: z.array(PathPatternSchema).max(256).optional(),
        paths_denied: z.array(PathPatternSchema).max(256).optional(),
      }).strict();
    case 'names':
      return z.object({
        ...CommonOptions,
        [scope.option]: scope.required
          ? z.array(NameGlob, { error: (iss) => (iss.input === undefined ? `${def.name} needs ${scope.option}` : undefined) }).min(1, `${def.name} needs ${scope.option}`).max(512)
          : z.array(NameGlob).max(512).optional(),
      }).strict();
  }
}

export interface CapabilityOptions {
  approval?: Approval;
  tiers?: Level[];
  timeout_s?: number;
  max_output_bytes?: number;
  paths_allowed?: string[];
  paths_denied?: string[];
  binaries?: string[];
  env_allowed?: string[];
  enabled?: true;
  containers?: string[];
  services?: string[];
  packages?: string[];
  images?: string[];
}

/**
 * The manifest schema with an options schema for each capability in `names` (those the manifest names
 * that the registry knows). Building all of them took most of a CLI call's manifest check; a capability
 * the manifest does not name has no options to check, and an unknown name is still an unrecognised key.
 */
function manifestSchema(registry: CapabilityRegistry, names: readonly string[]) {
  const caps: Record<string, z.ZodType> = {};
  for (const name of names) {
    const def = registry.get(name);
    if (def) caps[def.name] = capabilityOptionsSchema(def).optional();
  }
  return z.object({
    device: DeviceNameSchema,
    os: OsSchema.default('linux'),
    transport: TransportSchema.default({ kind: 'local' }),
    operators: z.array(z.string().regex(/^@[^:\s]+:\S+$/, 'must be a Matrix ID like @you:example.org')).max(32).default([]),
    description: z.string().max(500).optional(),
    limits: LimitsSchema.default({ timeout_s: 30, max_output_bytes: 65536 }),
    capabilities: z.object(caps).strict().default({}),
    workspace: WorkspaceSectionSchema.optional(),
  }).strict();
}

/** Schemas per registry, by the set of capability names (a fleet's manifests share a few sets); bounded. */
const schemaCache = new WeakMap<CapabilityRegistry, Map<string, ReturnType<typeof manifestSchema>>>();
const SCHEMA_CACHE_MAX = 64;
function schemaFor(registry: CapabilityRegistry, raw: unknown) {
  const caps = raw !== null && typeof raw === 'object' ? (raw as Record<string, unknown>)['capabilities'] : undefined;
  const names = caps !== null && typeof caps === 'object' && !Array.isArray(caps)
    ? Object.keys(caps).filter((n) => registry.get(n) !== undefined).sort()
    : [];
  let byNames = schemaCache.get(registry);
  if (!byNames) {
    byNames = new Map();
    schemaCache.set(registry, byNames);
  }
  const key = names.join(',');
  let s = byNames.get(key);
  if (!s) {
    if (byNames.size >= SCHEMA_CACHE_MAX) byNames.clear();
    s = manifestSchema(registry, names);
    byNames.set(key, s);
  }
  return s;
}

export interface Manifest {
  device: string;
  os: DeviceOs;
  transport: TransportConfig;
  operators: string[];
  description?: string;
  limits: { timeout_s: number; max_output_bytes: number };
  capabilities: Record<string, CapabilityOptions | undefined>;
  /** Present only in a workspace's derived manifest. */
  workspace?: WorkspaceSection;
  /** sha256 of the file's bytes: the agent reports it in /health so drift is visible. */
  hash: string;
  source: string;
}

export interface ManifestIssue {
  file: string;
  line: number | null;
  field: string;
  message: string;
}

export function formatIssue(i: ManifestIssue): string {
  const where = i.line === null ? path.basename(i.file) : `${path.basename(i.file)}:${i.line}`;
  return `${where} ${i.field ? i.field + ': ' : ''}${i.message}`;
}

export type ManifestParse = { ok: true; manifest: Manifest } | { ok: false; issues: ManifestIssue[] };

export function fieldName(p: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of p) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${String(seg)}` : String(seg);
  return out;
}

/** The line of the deepest YAML node along `p` (the key's line for a missing or unknown key). */
export function lineOf(doc: ReturnType<typeof parseDocument>, counter: LineCounter, p: ReadonlyArray<PropertyKey>): number | null {
  let node: unknown = doc.contents;
  let offset: number | undefined = (doc.contents as YamlNode | null)?.range?.[0];
  for (const seg of p) {
    if (isMap(node)) {
      const pair = node.items.find((it) => (it.key as { value?: unknown } | null)?.value === seg);
      if (!pair) break;
      offset = (pair.key as YamlNode | null)?.range?.[0] ?? offset;
      node = pair.value;
      // A scalar value's own line is the most precise place to point at.
      const valueOffset = (pair.value as YamlNode | null)?.range?.[0];
      if (valueOffset !== undefined && !isMap(pair.value)) offset = valueOffset;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg] as YamlNode | undefined;
      if (!item) break;
      offset = item.range?.[0] ?? offset;
      node = item;
    } else break;
  }
  return offset === undefined ? null : counter.linePos(offset).line;
}

export function parseManifest(text: string, file: string, registry: CapabilityRegistry = builtinRegistry()): ManifestParse {
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      issues: doc.errors.map((e) => ({
        file, line: e.linePos?.[0]?.line ?? null, field: '',
        message: `YAML syntax: ${e.message.split('\n')[0] ?? e.message}`,
      })),
    };
  }
  const raw: unknown = doc.toJS({ maxAliasCount: 50 });
  // jitless: zod would otherwise generate and compile a parser for each object schema on its first
  // parse, which costs more than it saves for a file parsed once (same checks, same issues).
  const parsed = schemaFor(registry, raw ?? {}).safeParse(raw ?? {}, { jitless: true });
  if (!parsed.success) {
    const issues: ManifestIssue[] = [];
    for (const issue of parsed.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          const p = [...issue.path, key];
          const atCaps = issue.path.length === 1 && issue.path[0] === 'capabilities';
          issues.push({
            file, line: lineOf(doc, counter, p), field: fieldName(p),
            message: atCaps ? `unknown capability (known: ${registry.names().join(', ')})` : 'unknown field',
          });
        }
        continue;
      }
      issues.push({ file, line: lineOf(doc, counter, issue.path), field: fieldName(issue.path), message: issue.message });
    }
    issues.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
    return { ok: false, issues };
  }
  const data = parsed.data as Omit<Manifest, 'hash' | 'source'>;
  return { ok: true, manifest: { ...data, hash: createHash('sha256').update(text).digest('hex'), source: file } };
}

export function loadManifest(file: string, registry?: CapabilityRegistry): ManifestParse {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { ok: false, issues: [{ file, line: null, field: '', message: code === 'ENOENT' ? 'file not found' : `cannot read: ${(err as Error).message}` }] };
  }
  return parseManifest(text, file, registry);
}

/** Loads a manifest or throws a MeshpilotError whose message lists every issue. */
export function loadManifestOrThrow(file: string, registry?: CapabilityRegistry): Manifest {
  const r = loadManifest(file, registry);
  if (!r.ok) throw new MeshpilotError('manifest_invalid', r.issues.map(formatIssue).join('\n'));
  return r.manifest;
}

export function defaultApproval(risk: Risk): Approval {
  return risk === 'read' ? 'never' : risk === 'admin' ? 'always' : 'risky';
}

/** Renders a template for a device: sets `device:` (and optionally the transport), keeping comments. */
export function renderTemplate(templateText: string, device: string, transport?: TransportConfig): string {
  const doc = parseDocument(templateText);
  doc.set('device', device);
  if (transport) doc.set('transport', doc.createNode(transport, { flow: true }));
  return doc.toString();
}
