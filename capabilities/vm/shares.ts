/**
 * VM shares (`vm.share` / `vm.unshare`, capabilities/catalog/vm-share.ts) in meshpilot.db: one row per
 * shared port, with a 128-bit random id (the `/s/<id>/` path of the launcher's share gateway,
 * launcher/http/share.ts), the device, the VM, the guest port, the device port it is published on,
 * whether anyone with the link may open it (public) or only its grantees (Matrix IDs, through a
 * dashboard session), its owner and when it was made.
 *
 * The store lives where meshpilot.db is (launcher, bots, CLI): each of them sets it once with
 * setShareStore (as the VM gate's quota store). Without one, vm.share refuses with a clear message.
 * Removing a share (vm.unshare, vm.rm of its VM) deletes its row, so the gateway answers 404 at once:
 * it reads the row on every request.
 */
import { randomBytes } from 'node:crypto';
// Type only: vm.share is in the capability catalog, which the device agent bundles without SQLite.
import type { Db } from '../db.js';

const SHARES_SQL = `
  CREATE TABLE IF NOT EXISTS vm_shares (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    vm TEXT NOT NULL,
    port INTEGER NOT NULL,
    address TEXT NOT NULL DEFAULT '127.0.0.1',
    host_port INTEGER,
    public INTEGER NOT NULL,
    grantees TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (device, vm, port)
  );
`;

export interface VmShare {
  /** 32 hex characters (128 random bits): the gateway's `/s/<id>/`. */
  id: string;
  device: string;
  vm: string;
  /** The guest port. */
  port: number;
  /** Where the device reaches the guest port (VmBackend.publish): 127.0.0.1 (published) or the VM's bridge address. */
  address: string;
  /** The port at `address`: the published loopback port, or the guest port itself on the bridge; null when unknown. */
  hostPort: number | null;
  public: boolean;
  /** Matrix IDs allowed to open a private share (with a dashboard session). */
  grantees: string[];
  owner: string;
  createdMs: number;
}

export const SHARE_ID = /^[0-9a-f]{32}$/;

interface Row {
  id: string; device: string; vm: string; port: number; address: string; host_port: number | null; public: number; grantees: string; owner: string; created_ms: number;
}

function fromRow(r: Row): VmShare {
  let grantees: string[] = [];
  try {
    const parsed: unknown = JSON.parse(r.grantees);
    if (Array.isArray(parsed)) grantees = parsed.filter((g): g is string => typeof g === 'string');
  } catch { /* a damaged row grants nobody */ }
  return { id: r.id, device: r.device, vm: r.vm, port: r.port, address: r.address, hostPort: r.host_port, public: r.public === 1, grantees, owner: r.owner, createdMs: r.created_ms };
}

export class ShareStore {
  constructor(private readonly db: Db, private readonly now: () => number = Date.now) {
    // The table is created here, not by a registered migration: this module is part of the capability
    // catalog, which the device agent bundles, and the agent has no SQLite.
    db.exec(SHARES_SQL);
  }

  /**
   * Shares `port` of `vm`: a new row with a fresh id, or, when that port is already shared, the same id
   * with the new public flag and the grantees added (a link already sent keeps working).
   */
  share(s: Omit<VmShare, 'id' | 'createdMs'>): { share: VmShare; created: boolean } {
    return this.db.transaction(() => {
      const cur = this.db.prepare('SELECT * FROM vm_shares WHERE device = ? AND vm = ? AND port = ?').get(s.device, s.vm, s.port) as Row | undefined;
      if (cur) {
        const old = fromRow(cur);
        const grantees = [...new Set([...old.grantees, ...s.grantees])];
        this.db.prepare('UPDATE vm_shares SET public = ?, grantees = ?, address = ?, host_port = ? WHERE id = ?').run(s.public ? 1 : 0, JSON.stringify(grantees), s.address, s.hostPort, old.id);
        return { share: { ...old, public: s.public, grantees, address: s.address, hostPort: s.hostPort }, created: false };
      }
      const share: VmShare = { ...s, id: randomBytes(16).toString('hex'), createdMs: this.now() };
      this.db.prepare('INSERT INTO vm_shares (id, device, vm, port, address, host_port, public, grantees, owner, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(share.id, share.device, share.vm, share.port, share.address, share.hostPort, share.public ? 1 : 0, JSON.stringify(share.grantees), share.owner, share.createdMs);
      return { share, created: true };
    }).immediate();
  }

  /** Removes the share of `port` (every port when undefined); answers what was removed. */
  unshare(device: string, vm: string, port?: number): VmShare[] {
    return this.db.transaction(() => {
      const rows = (port === undefined
        ? this.db.prepare('SELECT * FROM vm_shares WHERE device = ? AND vm = ?').all(device, vm)
        : this.db.prepare('SELECT * FROM vm_shares WHERE device = ? AND vm = ? AND port = ?').all(device, vm, port)) as Row[];
      for (const r of rows) this.db.prepare('DELETE FROM vm_shares WHERE id = ?').run(r.id);
      return rows.map(fromRow);
    }).immediate();
  }

  get(id: string): VmShare | undefined {
    if (!SHARE_ID.test(id)) return undefined;
    const row = this.db.prepare('SELECT * FROM vm_shares WHERE id = ?').get(id) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  list(device: string, vm?: string): VmShare[] {
    const rows = (vm === undefined
      ? this.db.prepare('SELECT * FROM vm_shares WHERE device = ? ORDER BY vm, port').all(device)
      : this.db.prepare('SELECT * FROM vm_shares WHERE device = ? AND vm = ? ORDER BY port').all(device, vm)) as Row[];
    return rows.map(fromRow);
  }
}

/** May this viewer (a dashboard session's actor, or nobody) open the share? The owner and the grantees may; public: anyone. */
export function mayOpen(share: VmShare, viewer: string | undefined): boolean {
  if (share.public) return true;
  if (viewer === undefined) return false;
  return viewer === share.owner || share.grantees.includes(viewer);
}

/** The gateway path of a share: `/s/<id>/`. */
export function sharePath(id: string): string {
  return `/s/${id}/`;
}

let store: ShareStore | undefined;
/** The launcher's URL, or how to get it (the CLI reads config.yaml only when a share is made). */
let gatewayBase: string | (() => string | undefined) | undefined;

/** Set once per process that has meshpilot.db (launcher, bots, CLI); `baseUrl` is the launcher's HTTP server, for full links. */
export function setShareStore(s: ShareStore | undefined, baseUrl?: string | (() => string | undefined)): void {
  store = s;
  gatewayBase = baseUrl;
}

export function shareStore(): ShareStore | undefined {
  return store;
}

/** `http://127.0.0.1:7400/s/<id>/`, or the path alone when the launcher's URL is not known here. */
export function shareUrl(id: string): string {
  const base = typeof gatewayBase === 'function' ? gatewayBase() : gatewayBase;
  return `${base?.replace(/\/+$/, '') ?? ''}${sharePath(id)}`;
}
