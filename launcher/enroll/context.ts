/**
 * What every enrollment step stands on: the context it gets, the Step contract, and the secret
 * files under MESHPILOT_HOME/keys/<device>/ (0600).
 */
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { HomeLayout } from '../../capabilities/home.js';
import type { TransportConfig } from '../../capabilities/manifest.js';
import type { Config } from '../../capabilities/config.js';
import type { Remote } from './remote.js';
import type { EnrollData, EnrollStore } from './store.js';
import type { AddPcOptions, OnEvent, Via } from './types.js';

export interface EnrollContext {
  device: string;
  via: Via;
  opts: AddPcOptions;
  home: HomeLayout;
  config: Config;
  store: EnrollStore;
  data: EnrollData;
  /** Persists `data` now (call before doing something an undo must know about). */
  save(): void;
  emit: OnEvent;
  info(message: string): void;
  warn(message: string): void;
  /** The ssh transport of the target (from --ssh, --ssh-key). */
  targetTransport: Extract<TransportConfig, { kind: 'ssh' }>;
  target(): Remote;
  /** True while undoing because of revoke (archive instead of delete). */
  revoking: boolean;
  close(): Promise<void>;
}

export interface Step {
  id: string;
  title: string;
  /** Runs even when check() says done (preflight: it learns facts later steps need). */
  always?: boolean;
  check(ctx: EnrollContext): Promise<boolean>;
  apply(ctx: EnrollContext): Promise<string | void>;
  undo(ctx: EnrollContext): Promise<string | void>;
}

export type StepsFor = (via: Via, config: Config) => Step[];

export function keysDir(ctx: { home: HomeLayout; device: string }): string {
  return path.join(ctx.home.keys, ctx.device);
}

/** Writes a secret file (0600) atomically, its folder 0700. */
export function writeSecret(file: string, data: string | Buffer): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  chmodSync(path.dirname(file), 0o700);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
