/**
 * Trust levels at the one path (policy + the VM gate in invoke), no podman: a permission matrix of
 * levels × vm capabilities × owner, over an in-memory VM family (test/helpers/fake-vm.ts).
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { ConfigSchema } from '../capabilities/config.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker } from '../capabilities/invoke.js';
import { grantedTo, mayTalk, resolveLevel, staffIds, type Level } from '../capabilities/levels.js';
import { parseManifest } from '../capabilities/manifest.js';
import { CapabilityRegistry } from '../capabilities/registry.js';
import { VmGate } from '../capabilities/vm/quota-gate.js';
import { SqliteQuotaStore } from '../capabilities/vm/quota-sqlite.js';
import { fakeVmFamily } from './helpers/fake-vm.js';
import { tempDir } from './helpers/tmp.js';

const MANIFEST = `device: nas
capabilities:
  sys.info: {}
  vm.new: { tiers: [newbie, citizen, operator, admin], approval: never }
  vm.ls: { tiers: [newbie, citizen, operator, admin] }
  vm.rm: { tiers: [newbie, citizen, operator, admin], approval: never }
  vm.exec: { tiers: [citizen, operator, admin], approval: never }
  vm.logs: { tiers: [citizen, operator, admin] }
  vm.stop: { approval: never }
  vm.start: { approval: never }
`;

function setup(opts: { quotas?: Record<string, unknown>; failCreate?: () => boolean; createDelayMs?: number; manifest?: string } = {}) {
  const dir = tempDir('mp-levels-');
  const fake = fakeVmFamily(opts);
  const registry = new CapabilityRegistry(fake.defs);
  const r = parseManifest(opts.manifest ?? MANIFEST, 'nas.yaml', registry);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  const db = openDatabase(path.join(dir, 'meshpilot.db'));
  const audit = new SqliteAuditLog(db);
  const config = ConfigSchema.parse({ matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: ['@op:x'], ...(opts.quotas ? { quotas: opts.quotas } : {}) });
  const store = new SqliteQuotaStore(db, config.quotas);
  const invoker = new Invoker({ manifests: { get: (d) => (d === 'nas' ? r.manifest : undefined) }, audit, registry, gate: new VmGate(store) });
  return { dir, db, audit, invoker, store, vms: fake.vms, manifest: r.manifest, config };
}

type Who = Level | 'stranger';
const WHO: Who[] = ['stranger', 'newbie', 'citizen', 'operator', 'admin'];
const userOf = (w: Who) => `@${w}:x`;
const callerOf = (w: Who) => ({ user: userOf(w), level: w === 'stranger' ? null : w });

/** What each level may do to its own VM and to another's: 'ok', 'tier' (the manifest does not grant it) or 'owner' (not theirs). */
const EXPECTED: Record<Who, Record<string, [own: string, other: string]>> = {
  stranger: { 'vm.rm': ['tier', 'tier'], 'vm.exec': ['tier', 'tier'], 'vm.logs': ['tier', 'tier'], 'vm.stop': ['tier', 'tier'], 'vm.start': ['tier', 'tier'] },
  newbie: { 'vm.rm': ['ok', 'owner'], 'vm.exec': ['tier', 'tier'], 'vm.logs': ['tier', 'tier'], 'vm.stop': ['tier', 'tier'], 'vm.start': ['tier', 'tier'] },
  citizen: { 'vm.rm': ['ok', 'owner'], 'vm.exec': ['ok', 'owner'], 'vm.logs': ['ok', 'owner'], 'vm.stop': ['tier', 'tier'], 'vm.start': ['tier', 'tier'] },
  operator: { 'vm.rm': ['ok', 'ok'], 'vm.exec': ['ok', 'ok'], 'vm.logs': ['ok', 'ok'], 'vm.stop': ['ok', 'ok'], 'vm.start': ['ok', 'ok'] },
  admin: { 'vm.rm': ['ok', 'ok'], 'vm.exec': ['ok', 'ok'], 'vm.logs': ['ok', 'ok'], 'vm.stop': ['ok', 'ok'], 'vm.start': ['ok', 'ok'] },
};

const argsFor = (cap: string, name: string) => (cap === 'vm.exec' ? { name, argv: ['uname'] } : { name });

describe('trust levels: who resolves to what', () => {
  it('config users, operators, admins and the manifest\'s own operators; the highest wins; others are strangers', () => {
    const src = { users: { '@ann:x': 'citizen', '@bob:x': 'newbie', '@op:x': 'citizen' } as Record<string, Level>, operators: ['@op:x'], admins: ['@root:x'] };
    expect(resolveLevel('@ann:x', src)).toBe('citizen');
    expect(resolveLevel('@bob:x', src)).toBe('newbie');
    expect(resolveLevel('@op:x', src)).toBe('operator');
    expect(resolveLevel('@root:x', src)).toBe('admin');
    expect(resolveLevel('@eve:x', src)).toBeNull();
    expect(resolveLevel('@ann:x', src, { operators: ['@ann:x'] })).toBe('operator');    // The operator room and every bot's DMs: the config's operators, admins, and users listed as operator or admin.
    expect(staffIds({ ...src, users: { ...src.users, '@lee:x': 'admin' } }).sort()).toEqual(['@lee:x', '@op:x', '@root:x']);
  });

  it('the config parses users, admins and per-level quotas (newbie and citizen have defaults) and rejects unknown levels', () => {
    const base = { matrix: { homeserver_url: 'http://127.0.0.1:1' }, operators: ['@op:x'] };
    const c = ConfigSchema.parse({ ...base, users: { '@ann:x': 'citizen' }, admins: ['@root:x'], quotas: { citizen: { vms: 2, cpus: 2, memory_mb: 1024, disk_mb: 4096, max_ttl_h: 8 } } });
    expect(c.users).toEqual({ '@ann:x': 'citizen' });
    expect(c.quotas.citizen.vms).toBe(2);
    expect(c.quotas.newbie.vms).toBe(1);
    expect(c.quotas.operator).toBeUndefined();
    expect(ConfigSchema.safeParse({ ...base, users: { '@ann:x': 'king' } }).success).toBe(false);
    expect(ConfigSchema.safeParse({ ...base, users: { 'ann': 'citizen' } }).success).toBe(false);
  });

  it('a manifest grants per level: default operator and admin; a citizen may talk only where something is granted to them', () => {
    const { manifest, invoker } = setup();
    expect(manifest.capabilities['vm.exec']?.tiers).toEqual(['citizen', 'operator', 'admin']);
    expect(invoker.allowedCapabilities('nas', 'newbie').map((d) => d.name)).toEqual(['vm.ls', 'vm.new', 'vm.rm']);
    expect(invoker.allowedCapabilities('nas', 'citizen').map((d) => d.name)).toEqual(['vm.exec', 'vm.logs', 'vm.ls', 'vm.new', 'vm.rm']);
    expect(invoker.allowedCapabilities('nas', 'operator').map((d) => d.name)).toContain('sys.info');
    expect(invoker.allowedCapabilities('nas', null)).toEqual([]);
    expect(mayTalk(manifest, 'citizen')).toBe(true);
    expect(mayTalk(manifest, null)).toBe(false);
    const plain = setup({ manifest: 'device: nas\ncapabilities:\n  sys.info: {}\n  vm.ls: {}\n' }).manifest;
    expect(mayTalk(plain, 'citizen')).toBe(false);
    expect(mayTalk(plain, 'operator')).toBe(true);
    expect(grantedTo(plain, [{ name: 'vm.ls' }], 'admin')).toHaveLength(1);
    const bad = parseManifest('device: nas\ncapabilities:\n  vm.ls: { tiers: [king] }\n', 'nas.yaml', new CapabilityRegistry(fakeVmFamily().defs));
    expect(bad.ok).toBe(false);
  });

  it('a stranger and a citizen are denied what the manifest does not grant them, audited with the reason', async () => {
    const { invoker, audit } = setup();
    const r = await invoker.invoke({ device: 'nas', capability: 'sys.info', args: {}, actor: userOf('citizen'), caller: callerOf('citizen') });
    expect(r).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied', message: 'sys.info is not granted to citizens on nas (tiers [operator, admin])' } });
    const s = await invoker.invoke({ device: 'nas', capability: 'vm.ls', args: {}, actor: '@eve:x', caller: { user: '@eve:x', level: null } });
    expect(s.error?.message).toBe('vm.ls is not granted to strangers on nas (tiers [newbie, citizen, operator, admin])');
    expect(audit.tail(2, 'nas').map((e) => `${e.actor} ${e.capability} ${e.decision}/${e.outcome} ${e.reason}`)).toEqual([
      '@citizen:x sys.info denied/not_run sys.info is not granted to citizens on nas (tiers [operator, admin])',
      '@eve:x vm.ls denied/not_run vm.ls is not granted to strangers on nas (tiers [newbie, citizen, operator, admin])',
    ]);
    // Without a caller (CLI, API, reaper) the request is an operator's, as before levels.
    expect((await invoker.invoke({ device: 'nas', capability: 'sys.info', args: {}, actor: 'cli:root' })).ok).toBe(true);
  });
});

describe('trust levels: the permission matrix (levels × capabilities × owner)', () => {
  for (const who of WHO) {
    for (const [cap, [own, other]] of Object.entries(EXPECTED[who])) {
      for (const [whose, expected] of [['own', own], ['another\'s', other]] as const) {
        if (who === 'stranger' && whose === 'own') continue; // a stranger cannot have a VM
        it(`${who} ${cap} on ${whose} VM → ${expected}`, async () => {
          const { invoker, audit, vms } = setup();
          const owner = whose === 'own' ? who : 'citizen2';
          const made = await invoker.invoke({ device: 'nas', capability: 'vm.new', args: { name: 'box' }, actor: `@${owner}:x`, caller: { user: `@${owner}:x`, level: owner === 'citizen2' ? 'citizen' : (owner as Level) } });
          expect(made.ok).toBe(true);
          expect(vms.get('box')?.owner).toBe(`@${owner}:x`);
          const r = await invoker.invoke({ device: 'nas', capability: cap, args: argsFor(cap, 'box'), actor: `llm:${userOf(who)}`, caller: callerOf(who) });
          const last = audit.tail(1, 'nas')[0]!;
          if (expected === 'ok') {
            expect(r.ok, r.error?.message).toBe(true);
            expect(last.outcome).toBe('ok');
            return;
          }
          expect(r).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
          expect(r.error?.message).toBe(expected === 'tier'
            ? `${cap} is not granted to ${who === 'stranger' ? 'strangers' : `${who}s`} on nas (tiers [${cap === 'vm.rm' ? 'newbie, citizen, operator, admin' : cap === 'vm.exec' || cap === 'vm.logs' ? 'citizen, operator, admin' : 'operator, admin'}])`
            : `${cap} box denied: box is not one of your VMs on nas`);
          expect(last).toMatchObject({ actor: `llm:${userOf(who)}`, capability: cap, decision: 'denied', outcome: 'not_run', error_code: 'policy_denied', reason: r.error?.message });
          expect(vms.has('box')).toBe(true); // nothing happened to it
        });
      }
    }
  }

  it('vm.ls: below operator lists only their own VMs (whatever owner they ask for); operators and admins see all', async () => {
    const { invoker } = setup();
    for (const who of ['newbie', 'citizen', 'operator'] as const) {
      await invoker.invoke({ device: 'nas', capability: 'vm.new', args: { name: `${who}-vm` }, actor: userOf(who), caller: callerOf(who) });
    }
    const names = async (who: Who, args: Record<string, unknown> = {}) => {
      const r = await invoker.invoke({ device: 'nas', capability: 'vm.ls', args, actor: userOf(who), caller: callerOf(who) });
      return (r.result?.data as Array<{ name: string }>).map((v) => v.name).sort();
    };
    expect(await names('newbie')).toEqual(['newbie-vm']);
    expect(await names('citizen', { owner: '@operator:x' })).toEqual(['citizen-vm']);
    expect(await names('operator')).toEqual(['citizen-vm', 'newbie-vm', 'operator-vm']);
    expect(await names('admin')).toEqual(['citizen-vm', 'newbie-vm', 'operator-vm']);
    expect(await names('admin', { owner: '@newbie:x' })).toEqual(['newbie-vm']);
  });

  it('nobody chooses the owner: vm.new labels the VM with the caller, whatever owner the arguments say', async () => {
    const { invoker, vms, store } = setup();
    await invoker.invoke({ device: 'nas', capability: 'vm.new', args: { name: 'mine', owner: '@admin:x' }, actor: 'llm:@citizen:x', caller: callerOf('citizen') });
    expect(vms.get('mine')?.owner).toBe('@citizen:x');
    expect(store.ownerOf('nas', 'mine')).toBe('@citizen:x');
    // A VM meshpilot has no record of (made before, or by hand with our labels) is nobody's below operator.
    vms.set('orphan', { name: 'orphan', owner: '@citizen:x', state: 'running' });
    const r = await invoker.invoke({ device: 'nas', capability: 'vm.exec', args: { name: 'orphan', argv: ['id'] }, actor: '@citizen:x', caller: callerOf('citizen') });
    expect(r.error?.message).toBe('vm.exec orphan denied: orphan is not one of your VMs on nas');
  });
});
