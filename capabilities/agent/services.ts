/**
 * Service templates for running the agent at boot (manifests/services/):
 *   systemd  meshpilot-agent.service   (Linux)
 *   launchd  com.meshpilot.agent.plist (macOS)
 *   windows  meshpilot-agent.xml       (Task Scheduler; written as UTF-16LE with a BOM)
 * Placeholders are {{NAME}}; every value is checked and escaped for its file format, and a
 * template with a placeholder left over is an error.
 */
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MeshpilotError } from '../errors.js';
import { PACKAGE_ROOT } from '../home.js';

export type ServiceKind = 'systemd' | 'launchd' | 'windows';
export const SERVICE_KINDS: readonly ServiceKind[] = ['systemd', 'launchd', 'windows'];

export const SERVICES_DIR = path.join(PACKAGE_ROOT, 'manifests', 'services');

export const SERVICE_FILES: Record<ServiceKind, { template: string; installAs: string }> = {
  systemd: { template: 'meshpilot-agent.service', installAs: '/etc/systemd/system/meshpilot-agent.service' },
  launchd: { template: 'com.meshpilot.agent.plist', installAs: '/Library/LaunchDaemons/com.meshpilot.agent.plist' },
  windows: { template: 'meshpilot-agent.xml', installAs: 'meshpilot-agent.xml (schtasks /Create /TN meshpilot-agent /XML meshpilot-agent.xml)' },
};

export interface ServiceVars {
  /** Absolute path of the node binary (>= 18). */
  node: string;
  /** Absolute path of meshpilot-agent.mjs. */
  agent: string;
  /** Absolute path of the agent config file. */
  config: string;
  /** Account the agent runs as; default: the current user (windows: the current user, or an SID like S-1-5-19). */
  user?: string;
  /** Default: the config file's directory. */
  workdir?: string;
  /** launchd log directory; default: the config file's directory. */
  logDir?: string;
  /** launchd label; default com.meshpilot.agent. */
  label?: string;
}

const SERVICE_ACCOUNT_SID = /^S-1-5-(18|19|20)$/;

function isAbsoluteFor(kind: ServiceKind, p: string): boolean {
  return kind === 'windows' ? /^[A-Za-z]:[\\/]/.test(p) || p.startsWith('\\\\') : p.startsWith('/');
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function systemdEscape(s: string): string {
  // Values sit inside "…" on ExecStart or bare on User=/WorkingDirectory=: % starts a specifier.
  return s.replace(/\\/g, '\\\\').replace(/%/g, '%%');
}

function check(kind: ServiceKind, name: string, value: string, opts: { path?: boolean } = {}): string {
  if (!value || value.length > 1024) throw new MeshpilotError('usage', `${name} must be 1-1024 characters`);
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new MeshpilotError('usage', `${name} must not contain control characters or newlines`);
  if (value.includes('"')) throw new MeshpilotError('usage', `${name} must not contain a double quote`);
  if (opts.path && !isAbsoluteFor(kind, value)) throw new MeshpilotError('usage', `${name} must be an absolute path (${value})`);
  if (kind === 'systemd' && !opts.path && /\s/.test(value)) throw new MeshpilotError('usage', `${name} must not contain spaces`);
  return value;
}

function defaultUser(): string {
  try { return os.userInfo().username; } catch { return 'meshpilot'; }
}

/** The placeholder values for one kind, checked and escaped. */
export function serviceValues(kind: ServiceKind, vars: ServiceVars): Record<string, string> {
  const dir = kind === 'windows' ? path.win32.dirname(vars.config) : path.posix.dirname(vars.config);
  const user = vars.user ?? defaultUser();
  const raw: Record<string, string> = {
    NODE: check(kind, 'node', vars.node, { path: true }),
    AGENT: check(kind, 'agent', vars.agent, { path: true }),
    CONFIG: check(kind, 'config', vars.config, { path: true }),
    WORKDIR: check(kind, 'workdir', vars.workdir ?? dir, { path: true }),
    LOG_DIR: check(kind, 'log dir', vars.logDir ?? dir, { path: true }),
    USER: check(kind, 'user', user),
    LABEL: check(kind, 'label', vars.label ?? 'com.meshpilot.agent'),
    LOGON_TYPE: SERVICE_ACCOUNT_SID.test(user) ? 'ServiceAccount' : 'S4U',
  };
  if (!/^[A-Za-z0-9._-]+$/.test(raw['LABEL']!)) throw new MeshpilotError('usage', 'label may hold only letters, digits, dot, dash and underscore');
  const esc = kind === 'systemd' ? systemdEscape : xmlEscape;
  return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, esc(v)]));
}

/** Fills a template text; throws when a placeholder has no value. */
export function fillTemplate(text: string, values: Record<string, string>): string {
  const out = text.replace(/\{\{([A-Z_]+)\}\}/g, (m, name: string) => {
    const v = values[name];
    if (v === undefined) throw new MeshpilotError('internal', `service template placeholder ${m} has no value`);
    return v;
  });
  return out;
}

export function renderService(kind: ServiceKind, vars: ServiceVars, templatesDir: string = SERVICES_DIR): string {
  const text = readFileSync(path.join(templatesDir, SERVICE_FILES[kind].template), 'utf8');
  return fillTemplate(text, serviceValues(kind, vars));
}

/** The bytes to write: UTF-8, except the Task Scheduler XML (UTF-16LE with a BOM, as it declares). */
export function serviceFileBytes(kind: ServiceKind, text: string): Buffer {
  if (kind !== 'windows') return Buffer.from(text, 'utf8');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text.replace(/\r?\n/g, '\r\n'), 'utf16le')]);
}
