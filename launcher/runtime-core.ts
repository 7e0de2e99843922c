/**
 * What every launcher command stands on: the data directory, the database, the audit log,
 * the device registry and the one Invoker. The ssh and mesh transports are not loaded here (ssh2 and
 * the agent client cost every CLI start): launcher/runtime.ts loads both for the launcher and tests;
 * the CLI loads the one a command needs (loadTransports).
 */
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase, type Db } from '../capabilities/db.js';
import { ensureHome, resolveHome, type HomeLayout } from '../capabilities/home.js';
import { Invoker, type ApprovalHook } from '../capabilities/invoke.js';
import { builtinRegistry, type CapabilityRegistry } from '../capabilities/registry.js';
import { DeviceRegistry } from '../capabilities/device-registry.js';
import { loadConfig, QuotasSchema, type ConfigLoad } from '../capabilities/config.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { OrgGate } from '../capabilities/workspace/org.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { setShareStore, ShareStore } from '../capabilities/vm/shares.js';
import { baseUrlOf } from '../capabilities/dashboard-login.js';

export interface Runtime {
  home: HomeLayout;
  created: boolean;
  enrolledLocal: boolean;
  db: Db;
  audit: SqliteAuditLog;
  capabilities: CapabilityRegistry;
  devices: DeviceRegistry;
  invoker: Invoker;
  close(): Promise<void>;
}

export function openRuntime(opts: { root?: string; approve?: ApprovalHook } = {}): Runtime {
  const { home, created, enrolledLocal } = ensureHome(opts.root ?? resolveHome());
  const db = openDatabase(home.db);
  const audit = new SqliteAuditLog(db);
  const capabilities = builtinRegistry();
  const devices = new DeviceRegistry(home.manifests, capabilities);
  // config.yaml is read when a vm.* call first needs it (quotas, the share links' URL): not by every
  // `meshpilot cap` (a sys.info call has no use for it).
  let config: ConfigLoad | undefined;
  const readConfig = (): ConfigLoad => (config ??= loadConfig(home.config));
  // The CLI, the API and the reaper call as operators; the VM gate still records owners and releases quotas (vm.rm).
  let quota: SqliteQuotaStore | undefined;
  const quotaStore = (): SqliteQuotaStore => {
    if (!quota) {
      const c = readConfig();
      quota = new SqliteQuotaStore(db, c.ok ? c.config.quotas : QuotasSchema.parse({}));
    }
    return quota;
  };
  const gate = new VmGate({
    reserve: (...a) => quotaStore().reserve(...a),
    release: (...a) => quotaStore().release(...a),
    ownerOf: (...a) => quotaStore().ownerOf(...a),
  });
  // The org gate denies a workspace.delegate outside the caller's subtree here too (CLI, API), as in the bots.
  const invoker = new Invoker({ manifests: devices, audit, registry: capabilities, gate: [gate, new OrgGate(devices)], ...(opts.approve ? { approve: opts.approve } : {}) });
  // vm.share / vm.unshare record their rows here; links name the launcher's HTTP server.
  setShareStore(new ShareStore(db), () => {
    const c = readConfig();
    return c.ok ? baseUrlOf(c.config.http.listen) : undefined;
  });
  return {
    home, created, enrolledLocal, db, audit, capabilities, devices, invoker,
    async close() {
      await invoker.close();
      db.close();
    },
  };
}

/** Loads (registers) the transports of these kinds; `local` needs none. */
export async function loadTransports(kinds: Iterable<string>): Promise<void> {
  for (const kind of new Set(kinds)) {
    if (kind === 'ssh') await import('../capabilities/transports/ssh.js');
    if (kind === 'mesh') await import('../capabilities/transports/mesh.js');
    // A VM reached over ssh loads ssh.ts on its first call (capabilities/transports/vm.ts).
    if (kind === 'vm') await import('../capabilities/transports/vm.js');
  }
}
