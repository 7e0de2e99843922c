/**
 * MESHPILOT_HOME/config.yaml, zod-validated, with environment overrides. Secrets may live in the
 * file (0600) or come from the environment; they never reach logs (pino redaction) or argv.
 *
 * In capabilities/ because both the launcher and the bot process read it, and bots/ may import only
 * capabilities/. Each default is stated once, on its field: an absent section is `.prefault({})`,
 * which parses `{}` through the section's schema so the field defaults fill it.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { LineCounter, parseDocument, stringify } from 'yaml';
import { z } from 'zod';
import { MeshpilotError } from './errors.js';
import { DeviceNameSchema } from './manifest.js';
import { DEFAULT_LLM_MODEL } from './llm-model.js';
import { LevelSchema } from './levels.js';

const Mxid = z.string().regex(/^@[^:\s]+:\S+$/, 'must be a Matrix ID like @you:example.org');

/** WireGuard mesh settings used by `meshpilot add-pc --via wg` (launcher/enroll/wg.ts). */
export const MeshConfigSchema = z.object({
  hub: z.object({
    /** The hub's WireGuard interface (wg0). */
    interface: z.string().regex(/^[a-zA-Z0-9_.=+-]{1,15}$/),
    /** The hub's mesh address with the mesh prefix, e.g. 10.99.0.1/24: devices get addresses from this subnet. */
    address: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}\/(1[6-9]|2\d|30)$/, 'must be an IPv4 address with a /16-/30 prefix, e.g. 10.99.0.1/24'),
    /** What devices dial: host:port of the hub's WireGuard listener. */
    endpoint: z.string().regex(/^[A-Za-z0-9.-]{1,253}:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'must be host:port'),
    /** How to run `wg` on the hub: 'local' (meshpilot runs on the hub) or an ssh alias / user@host[:port]. */
    ssh: z.string().min(1).max(300).default('local'),
    /** Private key for that ssh connection (default: the ssh transport's default keys). */
    ssh_key: z.string().min(1).max(1024).optional(),
    /** The hub's wg-quick config file, where peers are persisted (default /etc/wireguard/<interface>.conf). */
    config_file: z.string().min(1).max(1024).optional(),
  }).strict(),
  /** The port the device agent listens on, on its mesh address. */
  agent_port: z.number().int().min(1).max(65535).default(7420),
  /** Where the agent is installed on a device (a per-device folder is made inside). */
  install_dir: z.string().min(1).max(1024).default('~/.meshpilot-agent'),
  /** Where the device's WireGuard config goes. */
  wg_dir: z.string().min(1).max(1024).default('/etc/wireguard'),
  /** How the agent is started: systemd when present, else a supervised background process. */
  service: z.enum(['auto', 'systemd', 'process']).default('auto'),
  persistent_keepalive_s: z.number().int().min(0).max(3600).default(25),
  /** How long add-pc waits for the agent's /health, then for the bot's "live" message. */
  health_timeout_s: z.number().int().min(1).max(600).default(30),
  live_timeout_s: z.number().int().min(1).max(600).default(60),
}).strict();
export type MeshConfig = z.infer<typeof MeshConfigSchema>;

/**
 * The launcher's HTTP server (launcher/http/): the `/v1` API and the dashboard. `listen` is host:port;
 * loopback unless the config says otherwise (a non-loopback address is the operator's explicit choice).
 */
export const HttpConfigSchema = z.object({
  listen: z.string().max(300)
    .regex(/^([A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\]):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:7400')
    .default('127.0.0.1:7400'),
  /** Requests with a larger body are refused with 413 (add-pc and exec bodies are small). */
  max_body_bytes: z.number().int().min(1024).max(10 * 1024 * 1024).default(64 * 1024),
  /** Failed authentications per client address per minute before 429. */
  auth_failures_per_min: z.number().int().min(1).max(10_000).default(10),
}).strict();
export type HttpConfig = z.infer<typeof HttpConfigSchema>;

/** One level's VM quota: across all devices, per owner (capabilities/vm/quota-sqlite.ts). */
export const QuotaLimitsSchema = z.object({
  vms: z.number().int().min(0).max(10_000),
  cpus: z.number().min(0).max(100_000),
  memory_mb: z.number().int().min(0).max(100_000_000),
  disk_mb: z.number().int().min(0).max(1_000_000_000),
  max_ttl_h: z.number().min(0).max(24 * 365),
}).strict();
export type QuotaLimits = z.infer<typeof QuotaLimitsSchema>;

/** Quotas per level: newbie and citizen have defaults; operators and admins have none unless set. */
export const QuotasSchema = z.object({
  newbie: QuotaLimitsSchema.default({ vms: 1, cpus: 1, memory_mb: 512, disk_mb: 2048, max_ttl_h: 4 }),
  citizen: QuotaLimitsSchema.default({ vms: 3, cpus: 4, memory_mb: 4096, disk_mb: 20480, max_ttl_h: 24 }),
  operator: QuotaLimitsSchema.optional(),
  admin: QuotaLimitsSchema.optional(),
}).strict();
export type Quotas = z.infer<typeof QuotasSchema>;

/**
 * Built on first use: every process imports this module, and a CLI call without a config.yaml (or
 * one that never reads it, `meshpilot cap`) has no use for the schema of every section.
 */
export const ConfigSchema = z.lazy(() => z.object({
  matrix: z.object({
    homeserver_url: z.url().max(512),
    /** The part after the colon in user IDs; defaults to the homeserver's host. */
    server_name: z.string().min(1).max(255).optional(),
    registration_shared_secret: z.string().min(1).max(1024).optional(),
    /** Bot user IDs are `@<bot_prefix><device>:<server_name>`. */
    bot_prefix: z.string().regex(/^[a-z0-9._=-]*$/).max(32).default('meshpilot-'),
    operator_bot: z.string().regex(/^[a-z0-9._=-]+$/).max(64).default('meshpilot'),
    /** Room for health alerts; created on first run when absent. */
    operator_room: z.string().max(255).optional(),
    /**
     * End-to-end encryption of device bots' DMs: `auto` uses it whenever a Matrix crypto module loads
     * (the WebAssembly one always does), `off` never (about 25 MB less memory per bot).
     */
    encryption: z.enum(['auto', 'off']).default('auto'),
  }).strict(),
  /** Operators for every device (a manifest's own `operators` add to these). */
  operators: z.array(Mxid).min(1).max(32),
  /** Admins for every device (capabilities/levels.ts). */
  admins: z.array(Mxid).max(32).default([]),
  /** Matrix ID → trust level (newbie, citizen, operator, admin); what each level may do is up to the manifests' `tiers`. */
  users: z.record(Mxid, LevelSchema).refine((u) => Object.keys(u).length <= 10_000, 'at most 10000 users').default({}),
  /** VM quotas per level (capabilities/vm/quota-sqlite.ts). */
  quotas: QuotasSchema.prefault({}),
  llm: z.object({
    api_key: z.string().min(1).max(512).optional(),
    base_url: z.url().max(512).optional(),
    model: z.string().min(1).max(128).default(DEFAULT_LLM_MODEL),
    max_tokens: z.number().int().min(256).max(64000).default(2048),
    max_steps: z.number().int().min(1).max(32).default(8),
    daily_token_budget: z.number().int().min(1000).max(100_000_000).default(1_000_000),
    timeout_s: z.number().int().min(5).max(600).default(60),
    system_prompt: z.string().max(4000).optional(),
  }).strict().prefault({}),
  approvals: z.object({ timeout_s: z.number().int().min(1).max(3600).default(300) }).strict().prefault({}),
  supervisor: z.object({
    max_crashes: z.number().int().min(1).max(100).default(5),
    crash_window_s: z.number().int().min(10).max(86400).default(300),
    backoff_max_s: z.number().int().min(1).max(3600).default(60),
  }).strict().prefault({}),
  /** Voice messages → commands (bots/voice.ts). */
  voice: z.object({
    engine: z.enum(['pocketsphinx', 'whisper-http']).default('pocketsphinx'),
    whisper: z.object({
      /** Base URL (`http://127.0.0.1:8080`) or the full OpenAI-compatible `/v1/audio/transcriptions` URL. */
      url: z.url().max(512),
      api_key: z.string().min(1).max(512).optional(),
      model: z.string().min(1).max(128).default('whisper-1'),
      language: z.string().regex(/^[a-z]{2,3}$/).optional(),
      timeout_s: z.number().int().min(1).max(600).default(60),
    }).strict().optional(),
    max_bytes: z.number().int().min(1024).max(100 * 1024 * 1024).default(10 * 1024 * 1024),
    max_duration_s: z.number().int().min(1).max(1800).default(120),
    /** Below this, the bot asks "Did you mean …?" before acting (0 … 1). */
    min_confidence: z.number().min(0).max(1).default(0.7),
  }).strict()
    .refine((v) => v.engine !== 'whisper-http' || v.whisper !== undefined, { message: 'engine whisper-http needs voice.whisper.url', path: ['whisper'] })
    .prefault({}),
  health: z.object({
    schedule: z.string().max(64).default('* * * * *'),
    stale_after_s: z.number().int().min(30).max(86400).default(600),
    unreachable_after: z.number().int().min(1).max(20).default(2),
    remind_after_s: z.number().int().min(60).max(7 * 86400).default(6 * 3600),
    hub_interface: z.string().regex(/^[a-zA-Z0-9_.-]{1,15}$/).optional(),
    /** The device (an ssh manifest) that is the WireGuard hub; absent: `wg show` runs on the launcher's machine. */
    hub_device: DeviceNameSchema.optional(),
    /** Alerts in one cycle at or above which one digest message is sent instead. */
    digest_min: z.number().int().min(2).max(1000).default(5),
  }).strict().prefault({}),
  mesh: MeshConfigSchema.optional(),
  http: HttpConfigSchema.prefault({}),
}).strict());
export type Config = z.infer<typeof ConfigSchema>;
export type VoiceConfig = Config['voice'];

export type ConfigLoad =
  | { ok: true; config: Config }
  | { ok: false; missing: true; file: string }
  | { ok: false; missing: false; file: string; errors: string[] };

/** Environment variables that override (or supply) config values. */
export function envOverrides(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (env['ANTHROPIC_API_KEY']) o['llm.api_key'] = env['ANTHROPIC_API_KEY'];
  if (env['ANTHROPIC_BASE_URL']) o['llm.base_url'] = env['ANTHROPIC_BASE_URL'];
  if (env['MESHPILOT_HOMESERVER']) o['matrix.homeserver_url'] = env['MESHPILOT_HOMESERVER'];
  if (env['MESHPILOT_REGISTRATION_SECRET']) o['matrix.registration_shared_secret'] = env['MESHPILOT_REGISTRATION_SECRET'];
  if (env['MESHPILOT_HTTP_LISTEN']) o['http.listen'] = env['MESHPILOT_HTTP_LISTEN'];
  return o;
}

function setPath(obj: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.');
  let cur = obj;
  for (const k of keys.slice(0, -1)) {
    if (typeof cur[k] !== 'object' || cur[k] === null) cur[k] = {};
    cur = cur[k] as Record<string, unknown>;
  }
  cur[keys[keys.length - 1]!] = value;
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): ConfigLoad {
  if (!existsSync(file)) return { ok: false, missing: true, file };
  const counter = new LineCounter();
  const doc = parseDocument(readFileSync(file, 'utf8'), { lineCounter: counter });
  if (doc.errors.length) {
    return { ok: false, missing: false, file, errors: doc.errors.map((e) => `${file}:${e.linePos?.[0]?.line ?? '?'} YAML syntax: ${e.message.split('\n')[0]}`) };
  }
  const raw = (doc.toJS() ?? {}) as Record<string, unknown>;
  for (const [k, v] of Object.entries(envOverrides(env))) setPath(raw, k, v);
  // jitless: a file parsed once does not repay zod compiling a parser per object (same checks, same issues)
  const parsed = ConfigSchema.safeParse(raw, { jitless: true });
  if (!parsed.success) {
    return {
      ok: false, missing: false, file,
      errors: parsed.error.issues.map((i) => {
        const node = doc.getIn(i.path as Array<string | number>, true) as { range?: [number] } | undefined;
        const line = node?.range ? `:${counter.linePos(node.range[0]).line}` : '';
        return `${file}${line} ${i.path.join('.')}: ${i.message}`;
      }),
    };
  }
  return { ok: true, config: parsed.data };
}

export function loadConfigOrThrow(file: string, env?: NodeJS.ProcessEnv): Config {
  const r = loadConfig(file, env);
  if (r.ok) return r.config;
  if (r.missing) throw new MeshpilotError('config', `no config at ${file}: run \`meshpilot init\``);
  throw new MeshpilotError('config', r.errors.join('\n'));
}

export function serverNameOf(config: Config): string {
  return config.matrix.server_name ?? new URL(config.matrix.homeserver_url).hostname;
}

export function botUserId(config: Config, device: string): string {
  return `@${config.matrix.bot_prefix}${device}:${serverNameOf(config)}`;
}

export function writeConfig(file: string, config: Record<string, unknown>): void {
  writeFileSync(file, `# meshpilot config (see README: Configuration)\n${stringify(config)}`, { mode: 0o600 });
}
