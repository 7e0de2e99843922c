import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SqliteAuditLog } from '../capabilities/audit-sqlite.js';
import { openDatabase } from '../capabilities/db.js';
import { Invoker, type ApprovalHook } from '../capabilities/invoke.js';
import { parseManifest } from '../capabilities/manifest.js';
import { PACKAGE_ROOT } from '../capabilities/home.js';
import { tempDir } from './helpers/tmp.js';
// The ssh and mesh transports register themselves when loaded (as launcher/runtime.ts loads them).
import '../capabilities/transports/ssh.js';
import '../capabilities/transports/mesh.js';

function setup(approve?: ApprovalHook) {
  const dir = tempDir('mp-invoke-');
  writeFileSync(path.join(dir, 'hello.txt'), 'hello');
  const r = parseManifest(`device: box
capabilities:
  fs.read: { paths_allowed: ["${dir}/**"] }
  fs.write: { paths_allowed: ["${dir}/**"] }
  shell.exec: { binaries: ["sh"], approval: never }
  sys.info: {}
`, 'box.yaml');
  if (!r.ok) throw new Error('bad manifest');
  const db = openDatabase(path.join(dir, 'meshpilot.db'));
  const audit = new SqliteAuditLog(db);
  const invoker = new Invoker({ manifests: { get: (d) => (d === 'box' ? r.manifest : undefined) }, audit, ...(approve ? { approve } : {}) });
  return { dir, audit, invoker };
}

describe('invoke: the one path', () => {
  it('runs an allowed call and writes started + outcome entries that verify', async () => {
    const { dir, audit, invoker } = setup();
    const r = await invoker.invoke({ device: 'box', capability: 'fs.read', args: { path: `${dir}/hello.txt` }, actor: '@op:x.org' });
    expect(r.ok).toBe(true);
    expect(r.result?.stdout).toBe('hello');
    const entries = audit.tail(10, 'box');
    expect(entries.map((e) => [e.seq, e.decision, e.outcome])).toEqual([[1, 'allowed', 'started'], [2, 'allowed', 'ok']]);
    expect(r.audit?.seq).toBe(2);
    expect(entries[1]?.output_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(entries[1]?.actor).toBe('@op:x.org');
    expect(audit.verify('box')).toMatchObject({ ok: true, count: 2 });
  });

  it('audits denials: policy, invalid args, unknown capability; unknown device has no chain', async () => {
    const { audit, invoker } = setup();
    const denied = await invoker.invoke({ device: 'box', capability: 'fs.read', args: { path: '/etc/shadow' }, actor: 'a' });
    expect(denied).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
    const invalid = await invoker.invoke({ device: 'box', capability: 'fs.read', args: { path: 42 }, actor: 'a' });
    expect(invalid.error?.code).toBe('invalid_args');
    const unknown = await invoker.invoke({ device: 'box', capability: 'fs.nope', args: {}, actor: 'a' });
    expect(unknown.error?.code).toBe('unknown_capability');
    const notListed = await invoker.invoke({ device: 'box', capability: 'proc.list', args: {}, actor: 'a' });
    expect(notListed.error?.message).toBe('proc.list is not enabled on box (not listed in its manifest)');
    const noDevice = await invoker.invoke({ device: 'ghost', capability: 'sys.info', args: {}, actor: 'a' });
    expect(noDevice).toMatchObject({ ok: false, audit: null, error: { code: 'unknown_device' } });
    const entries = audit.tail(10, 'box');
    expect(entries.map((e) => `${e.decision}/${e.outcome}/${e.error_code}`)).toEqual([
      'denied/not_run/policy_denied', 'denied/not_run/invalid_args', 'denied/not_run/unknown_capability', 'denied/not_run/policy_denied',
    ]);
  });

  it('asks the approval hook for risky calls and records who approved or rejected', async () => {
    const asked: string[] = [];
    let answer = true;
    const { dir, audit, invoker } = setup(async (req) => {
      asked.push(`${req.capability}:${req.risk}`);
      return answer ? { approved: true, by: '@boss:x.org' } : { approved: false, by: '@boss:x.org', reason: 'no' };
    });
    const ok = await invoker.invoke({ device: 'box', capability: 'fs.write', args: { path: `${dir}/new.txt`, content: 'x' }, actor: 'a' });
    expect(ok).toMatchObject({ ok: true, decision: 'approved' });
    expect(readFileSync(`${dir}/new.txt`, 'utf8')).toBe('x');
    answer = false;
    const no = await invoker.invoke({ device: 'box', capability: 'fs.write', args: { path: `${dir}/no.txt`, content: 'x' }, actor: 'a' });
    expect(no).toMatchObject({ ok: false, decision: 'rejected', error: { code: 'approval_rejected' } });
    expect(() => statSync(`${dir}/no.txt`)).toThrow();
    expect(asked).toEqual(['fs.write:write', 'fs.write:write']);
    const last = audit.tail(1, 'box')[0];
    expect(last).toMatchObject({ decision: 'rejected', outcome: 'not_run' });
    expect(last?.reason).toContain('@boss:x.org');
    // shell.exec with approval: never does not ask.
    await invoker.invoke({ device: 'box', capability: 'shell.exec', args: { argv: ['sh', '-c', 'exit 3'] }, actor: 'a' });
    expect(asked).toHaveLength(2);
    expect(audit.tail(1, 'box')[0]).toMatchObject({ outcome: 'error', exit_code: 3 });
  });

  it('records a context (e.g. a voice transcript) and redacts secrets in args', async () => {
    const { audit, invoker } = setup();
    await invoker.invoke({ device: 'box', capability: 'shell.exec', args: { argv: ['sh', '-c', 'true'], env: { TOKEN: 'x' } }, actor: 'a', context: { transcript: 'run true', engine: 'pocketsphinx' } });
    const e = audit.tail(1, 'box')[0];
    expect(e?.context).toEqual({ transcript: 'run true', engine: 'pocketsphinx' });
    expect((e?.args as { env: Record<string, string> }).env['TOKEN']).toBe('[redacted]');
  });
});

describe('invoke: the policy decides before the device is contacted', () => {
  // A closed port: nothing listens there, so any contact with the "device" fails.
  async function closedPort(): Promise<number> {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    return port;
  }

  for (const kind of ['ssh', 'mesh'] as const) {
    it(`an unreachable ${kind} device audits a call its manifest denies as denied, and only an allowed call as error`, async () => {
      const dir = tempDir('mp-invoke-unreach-');
      const port = await closedPort();
      // A real key, so that the ssh transport gets as far as the (closed) port.
      if (kind === 'ssh') execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', `${dir}/id`]);
      const transport = kind === 'ssh'
        ? `{ kind: ssh, host: 127.0.0.1, port: ${port}, user: nobody, key: "${dir}/id", trust_on_first_use: true }`
        : `{ kind: mesh, address: 127.0.0.1, port: ${port} }`;
      const r = parseManifest(`device: far\ntransport: ${transport}\ncapabilities:\n  sys.info: {}\n  shell.exec: { binaries: ["echo"], approval: never }\n  docker.restart: { containers: ["web-*"] }\n`, 'far.yaml');
      if (!r.ok) throw new Error('bad manifest');
      const audit = new SqliteAuditLog(openDatabase(path.join(dir, 'meshpilot.db')));
      const invoker = new Invoker({ manifests: { get: (d) => (d === 'far' ? r.manifest : undefined) }, audit });
      try {
        const notEnabled = await invoker.invoke({ device: 'far', capability: 'proc.list', args: {}, actor: 'a' });
        expect(notEnabled).toMatchObject({ ok: false, decision: 'denied', error: { code: 'policy_denied' } });
        const badBinary = await invoker.invoke({ device: 'far', capability: 'shell.exec', args: { argv: ['rm', '-rf', '/'] }, actor: 'a' });
        expect(badBinary).toMatchObject({ decision: 'denied', error: { code: 'policy_denied' } });
        const badName = await invoker.invoke({ device: 'far', capability: 'docker.restart', args: { container: 'db' }, actor: 'a' });
        expect(badName).toMatchObject({ decision: 'denied', error: { code: 'policy_denied' } });
        const allowed = await invoker.invoke({ device: 'far', capability: 'sys.info', args: {}, actor: 'a' });
        expect(allowed).toMatchObject({ ok: false, decision: 'allowed', error: { code: 'unreachable' } });
        expect(audit.tail(10, 'far').map((e) => `${e.capability} ${e.decision}/${e.outcome}`)).toEqual([
          'proc.list denied/not_run', 'shell.exec denied/not_run', 'docker.restart denied/not_run', 'sys.info allowed/error',
        ]);
      } finally {
        await invoker.close();
      }
    }, 20_000);
  }
});

describe('architecture', () => {
  // What runs things on a device. Only invoke() (through the transport registry) and the device
  // agent (which wraps LocalHost in its own Invoker) may hold one of these.
  const EXECUTING = /^(LocalHost|runLocalProcess|SshHost|sshHostFor|SshPool|sshPool|PooledConnection|sshHandshake|MeshRunner|VmHost|vmHostFor|DefaultTransports|registerTransport)$/;
  // launcher/enroll/remote.ts installs WireGuard and the agent over ssh (add-pc): no capability may, and it audits each enrollment.
  const ALLOWED = new Set(['capabilities/invoke.ts', 'capabilities/agent/server.ts', 'launcher/enroll/remote.ts']);
  // The read-only probes: all that the health monitor and the hub reader use to look at a device
  // outside invoke(). sshPing runs `true`; sshWgDump runs `wg show <if> dump`; the agent client
  // (capabilities/agent/client.ts) reads GET /health and the signed GET /v1/audit and has no way to
  // invoke (POST /v1/invoke is the mesh transport's MeshRunner, which extends it). Enrollment (add-pc)
  // also reads the device's ssh host key before it trusts it: probeHostKey. The share gateway
  // (launcher/http/share.ts) runs nothing either: sshForward opens a stream to the loopback port an
  // audited vm.share recorded.
  const READ_ONLY_PROBES = new Set(['sshPing', 'sshWgDump', 'AgentClient', 'probeHostKey', 'sshForward']);
  // Imported from the transports or the agent client without reaching a device: names, paths, text,
  // the controller's own known_hosts file.
  const INERT = new Set(['resolveTarget', 'agentSecretPath', 'DEFAULT_AGENT_PORT', 'networkReason', 'asErrorCode', 'acceptHostKey', 'knownHostsPath', 'knownKeysFor']);
  const DEVICE_MODULE = /^(?:[^']*transports\/[^']+|[^']*agent\/client\.js)$/;

  /** Value imports (`import { a, b as c } from '…'`) of every source file outside the transports. */
  function valueImports(): Array<{ file: string; names: string[]; from: string }> {
    const out: Array<{ file: string; names: string[]; from: string }> = [];
    const walk = (dir: string): void => {
      for (const name of readdirSync(path.join(PACKAGE_ROOT, dir))) {
        const rel = path.join(dir, name);
        if (statSync(path.join(PACKAGE_ROOT, rel)).isDirectory()) {
          if (rel === 'capabilities/transports') continue; // the transports themselves
          walk(rel);
          continue;
        }
        if (!rel.endsWith('.ts')) continue;
        const text = readFileSync(path.join(PACKAGE_ROOT, rel), 'utf8');
        for (const m of text.matchAll(/import\s+(?!type\b)\{([^}]*)\}\s+from\s+'([^']+)'/g)) {
          const names = (m[1] ?? '').split(',').map((n) => n.trim()).filter((n) => n && !n.startsWith('type ')).map((n) => n.split(/\s+as\s+/)[0] ?? '');
          out.push({ file: rel, names, from: m[2] ?? '' });
        }
      }
    };
    for (const top of ['capabilities', 'bots', 'launcher']) walk(top);
    return out;
  }

  it('no module outside invoke and the device agent imports what executes on a device', () => {
    const offenders: string[] = [];
    for (const imp of valueImports()) {
      if (ALLOWED.has(imp.file) || !/transports\//.test(imp.from)) continue;
      const bad = imp.names.filter((n) => EXECUTING.test(n));
      if (bad.length) offenders.push(`${imp.file}: ${bad.join(', ')} from ${imp.from}`);
    }
    expect(offenders).toEqual([]);
  });

  it('outside invoke, only the named read-only probes reach a device', () => {
    const offenders: string[] = [];
    const used = new Set<string>();
    for (const imp of valueImports()) {
      if (ALLOWED.has(imp.file) || !DEVICE_MODULE.test(imp.from)) continue;
      for (const n of imp.names) {
        if (READ_ONLY_PROBES.has(n)) used.add(n);
        else if (!INERT.has(n)) offenders.push(`${imp.file}: ${n} from ${imp.from} (name it here if it is a read-only probe)`);
      }
    }
    expect(offenders).toEqual([]);
    expect([...used].sort()).toEqual([...READ_ONLY_PROBES].sort()); // each probe is in use (the list stays true)
  });

  it('the agent client cannot invoke: only the mesh transport extends it with POST /v1/invoke', () => {
    const client = readFileSync(path.join(PACKAGE_ROOT, 'capabilities/agent/client.ts'), 'utf8');
    expect(client).not.toContain('/v1/invoke\'');
    const extenders: string[] = [];
    const walk = (dir: string): void => {
      for (const name of readdirSync(path.join(PACKAGE_ROOT, dir))) {
        const rel = path.join(dir, name);
        if (statSync(path.join(PACKAGE_ROOT, rel)).isDirectory()) { walk(rel); continue; }
        if (rel.endsWith('.ts') && /extends\s+AgentClient\b/.test(readFileSync(path.join(PACKAGE_ROOT, rel), 'utf8'))) extenders.push(rel);
      }
    };
    for (const top of ['capabilities', 'bots', 'launcher']) walk(top);
    expect(extenders).toEqual(['capabilities/transports/mesh.ts']);
  });

  it('the check itself catches a forbidden import', () => {
    const sample = "import { LocalHost } from '../capabilities/transports/local.js';";
    const m = /import\s+(?!type\b)\{([^}]*)\}\s+from\s+'([^']*transports\/[^']+)'/.exec(sample);
    expect(m?.[1]?.trim()).toMatch(EXECUTING);
  });
});
