/**
 * The device agent's configuration file (YAML or JSON), e.g. /etc/meshpilot/agent.yaml:
 *
 *   device: pi
 *   listen: { address: 10.88.0.2, port: 7420 }   # the device's mesh (WireGuard) IP
 *   manifest: manifest.yaml                      # relative paths are relative to this file
 *   audit_log: audit.jsonl
 *   secret_file: agent.secret                    # 32 bytes, base64, mode 0600
 *   limits: { max_body_bytes: 1048576, rate_per_s: 20, burst: 40 }
 *
 * The agent never listens on 0.0.0.0 / :: unless `allow_any_address: true` says so.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { MeshpilotError } from '../errors.js';
import { DeviceNameSchema } from '../manifest.js';

const UNSPECIFIED = new Set(['0.0.0.0', '::', '0:0:0:0:0:0:0:0']);
const FilePath = z.string().min(1).max(1024).refine((p) => !p.includes('\0'), 'must not contain NUL');

export const AgentLimitsSchema = z.object({
  max_body_bytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  rate_per_s: z.number().min(0.01).max(1_000_000).default(20),
  burst: z.number().int().min(1).max(1_000_000).default(40),
  clock_skew_s: z.number().int().min(1).max(600).default(60),
  nonce_cache: z.number().int().min(100).max(10_000_000).default(100_000),
  max_concurrent: z.number().int().min(1).max(1024).default(16),
  /** /health re-verifies the whole JSONL chain at most this often (0: on every call). */
  chain_check_s: z.number().int().min(0).max(86_400).default(30),
  audit_page_max: z.number().int().min(1).max(10_000).default(1000),
}).strict();
export type AgentLimits = z.infer<typeof AgentLimitsSchema>;

export const AgentConfigSchema = z.object({
  device: DeviceNameSchema,
  listen: z.object({
    address: z.string().min(1).max(64).refine((a) => isIP(a) !== 0, 'must be an IP address (the device mesh IP, or 127.0.0.1)'),
    port: z.number().int().min(1).max(65535).default(7420),
  }).strict(),
  allow_any_address: z.boolean().default(false),
  manifest: FilePath,
  audit_log: FilePath,
  secret_file: FilePath,
  limits: AgentLimitsSchema.default(AgentLimitsSchema.parse({})),
}).strict().refine(
  (c) => !UNSPECIFIED.has(c.listen.address) || c.allow_any_address,
  { message: 'listening on every interface needs allow_any_address: true (use the mesh IP instead)', path: ['listen', 'address'] },
);
export type AgentConfig = z.infer<typeof AgentConfigSchema> & { source?: string };

/** Parses config text; relative file paths resolve against `baseDir`. */
export function parseAgentConfig(text: string, file: string): AgentConfig {
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text, { maxAliasCount: 10 });
  } catch (err) {
    throw new MeshpilotError('config', `${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = AgentConfigSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const msg = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new MeshpilotError('config', `${file}: ${msg}`);
  }
  const base = path.dirname(path.resolve(file));
  const abs = (p: string): string => path.resolve(base, p);
  return { ...parsed.data, manifest: abs(parsed.data.manifest), audit_log: abs(parsed.data.audit_log), secret_file: abs(parsed.data.secret_file), source: path.resolve(file) };
}

export function loadAgentConfig(file: string): AgentConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new MeshpilotError('config', code === 'ENOENT' ? `agent config ${file} not found` : `cannot read ${file}: ${(err as Error).message}`);
  }
  if (text.length > 256 * 1024) throw new MeshpilotError('config', `${file} is larger than 256 KiB`);
  return parseAgentConfig(text, file);
}
