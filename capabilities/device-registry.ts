/**
 * The device registry follows the files: a device exists when MESHPILOT_HOME/manifests/<device>.yaml
 * exists. Manifests are re-read when their file changes, so edits apply without a restart.
 * In capabilities/ because both the launcher and the bot process use it (bots/ import only capabilities/).
 */
import { readdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { formatIssue, loadManifest, DEVICE_NAME, type Manifest, type ManifestIssue } from './manifest.js';
import type { ManifestSource } from './invoke.js';
import type { CapabilityRegistry } from './registry.js';

export interface DeviceListing {
  device: string;
  file: string;
  manifest?: Manifest;
  issues?: ManifestIssue[];
}

export class DeviceRegistry implements ManifestSource {
  private readonly cache = new Map<string, { mtimeMs: number; size: number; listing: DeviceListing }>();

  constructor(readonly manifestsDir: string, private readonly capabilities?: CapabilityRegistry) {}

  fileFor(device: string): string {
    return path.join(this.manifestsDir, `${device}.yaml`);
  }

  names(): string[] {
    let files: string[];
    try {
      files = readdirSync(this.manifestsDir);
    } catch {
      return [];
    }
    return files
      .filter((f) => f.endsWith('.yaml'))
      .map((f) => f.slice(0, -'.yaml'.length))
      .filter((n) => DEVICE_NAME.test(n))
      .sort();
  }

  listing(device: string): DeviceListing | undefined {
    if (!DEVICE_NAME.test(device)) return undefined;
    const file = this.fileFor(device);
    let st;
    try {
      st = statSync(file);
    } catch {
      this.cache.delete(device);
      return undefined;
    }
    const hit = this.cache.get(device);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.listing;
    const parsed = loadManifest(file, this.capabilities);
    let listing: DeviceListing;
    if (!parsed.ok) listing = { device, file, issues: parsed.issues };
    else if (parsed.manifest.device !== device) {
      listing = { device, file, issues: [{ file, line: null, field: 'device', message: `says "${parsed.manifest.device}" but the file is ${device}.yaml` }] };
    } else listing = { device, file, manifest: parsed.manifest };
    this.cache.set(device, { mtimeMs: st.mtimeMs, size: st.size, listing });
    return listing;
  }

  list(): DeviceListing[] {
    return this.names().map((n) => this.listing(n)).filter((l): l is DeviceListing => l !== undefined);
  }

  /** A valid manifest, or undefined (unknown device or invalid manifest: see listing()). */
  get(device: string): Manifest | undefined {
    return this.listing(device)?.manifest;
  }

  problems(device: string): string | undefined {
    const l = this.listing(device);
    return l?.issues?.map(formatIssue).join('\n');
  }
}
