/**
 * The device agent as a real child process on 127.0.0.1 (sources through `meshpilot agent`, and the
 * esbuild bundle), driven by the controller's mesh transport and by hand-signed raw requests.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readJsonlEntries, verifyEntries, type AuditEntry } from '../capabilities/audit.js';
import { AUTH_HEADERS, loadSecretFile, NonceCache, parseSecret, TokenBuckets } from '../capabilities/agent/auth.js';
import { parseAgentConfig } from '../capabilities/agent/config.js';
import { HealthResponseSchema } from '../capabilities/agent/protocol.js';
import { renderService, serviceFileBytes, SERVICE_KINDS } from '../capabilities/agent/services.js';
import { MeshRunner } from '../capabilities/transports/mesh.js';
import { runCli, type CliIo } from '../launcher/cli.js';
import { openRuntime, type Runtime } from '../launcher/runtime.js';
import { BUNDLE_PATH, freePort, rawRequest, REPO_ROOT, startAgentProcess, writeAgentFiles, type AgentFiles, type AgentProcess } from './fixtures/agent-proc.js';

const DEVICE = 'dev1';
let root: string;
let data: string;
let files: AgentFiles;
let agent: AgentProcess;
let base: string;
let rt: Runtime;
let runner: MeshRunner;

function agentManifest(port: number): string {
  return [
    `device: ${DEVICE}`,
    'os: linux',
    `transport: { kind: mesh, address: 127.0.0.1, port: ${port} }`,
    'capabilities:',
    '  sys.info: {}',
    `  fs.list: { paths_allowed: ["${data}", "${data}/**"] }`,
    `  fs.read: { paths_allowed: ["${data}/**"], paths_denied: ["${data}/secret*"] }`,
    `  fs.write: { paths_allowed: ["${data}/**"], approval: always }`,
    '',
  ].join('\n');
}

/** What a careless (or compromised) controller would allow: much more than the agent does. */
function permissiveControllerManifest(port: number): string {
  return [
    `device: ${DEVICE}`,
    'os: linux',
    `transport: { kind: mesh, address: 127.0.0.1, port: ${port} }`,
    'capabilities:',
    '  sys.info: {}',
    '  fs.read: { paths_allowed: ["/**"] }',
    '  fs.write: { paths_allowed: ["/**"], approval: never }',
    '  shell.exec: { binaries: ["id"], approval: never }',
    '',
  ].join('\n');
}

function invokeBody(capability: string, args: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ capability, args, actor: '@test:example.org', request_id: `t-${randomBytes(4).toString('hex')}`, ...extra });
}

const signed = (o: { path: string; method?: 'GET' | 'POST'; body?: string; secret?: Buffer; now?: number; nonce?: string; mutate?: (h: Record<string, string>) => void; signedBody?: string; signedPath?: string; device?: string }) =>
  rawRequest(base, { method: o.method ?? 'POST', secret: o.secret ?? files.secret, device: o.device ?? DEVICE, ...o });

beforeAll(async () => {
  root = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'mp-agent-')));
  data = path.join(root, 'data');
  mkdirSync(data);
  writeFileSync(path.join(data, 'hello.txt'), 'hello from the device\n');
  writeFileSync(path.join(data, 'secret.txt'), 'do not read\n');
  const port = await freePort();
  files = writeAgentFiles({
    device: DEVICE, address: '127.0.0.1', port, root,
    manifest: agentManifest(port), controllerManifest: permissiveControllerManifest(port),
  });
  agent = await startAgentProcess(files, { mode: 'sources' });
  base = `http://127.0.0.1:${port}`;
  // The mesh transport factory reads the secret under MESHPILOT_HOME (the factory gets no home argument).
  process.env['MESHPILOT_HOME'] = files.home;
  rt = openRuntime({ root: files.home });
  runner = new MeshRunner({ device: DEVICE, address: '127.0.0.1', port, home: files.home });
});

afterAll(async () => {
  await runner?.close();
  await rt?.close();
  await agent?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('agent over loopback (sources via `meshpilot agent --config`)', () => {
  it('answers /health with device, version, manifest hash and audit head, and no secrets', async () => {
    const r = await rawRequest(base, { method: 'GET', path: '/health' });
    expect(r.status).toBe(200);
    const h = HealthResponseSchema.parse(r.json);
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(h.device).toBe(DEVICE);
    expect(h.version).toBe(pkg.version);
    expect(h.manifest.valid).toBe(true);
    expect(h.manifest.sha256).toBe(createHash('sha256').update(readFileSync(files.manifestFile)).digest('hex'));
    expect(h.audit.chain_ok).toBe(true);
    expect(h.home).toBe(os.homedir());
    expect(h.uptime_s).toBeGreaterThanOrEqual(0);
    for (const form of [files.secret.toString('base64'), files.secret.toString('hex'), files.secret.toString('base64url')]) {
      expect(r.text).not.toContain(form);
    }
    expect(r.text).not.toContain('secret_file');
  });

  it('runs sys.info through the controller mesh transport and returns the agent audit entry', async () => {
    const res = await rt.invoker.invoke({ device: DEVICE, capability: 'sys.info', args: {}, actor: '@test:example.org' });
    expect(res.error).toBeUndefined();
    expect(res.ok).toBe(true);
    expect(res.result?.stdout).toContain(os.hostname());
    expect(res.deviceAudit?.seq).toBeGreaterThan(0);
    const entries = [...readJsonlEntries(files.auditFile)];
    const last = entries[entries.length - 1]!;
    expect({ seq: last.seq, hash: last.hash }).toEqual(res.deviceAudit);
    expect(last.capability).toBe('sys.info');
    expect(last.outcome).toBe('ok');
    expect(last.context).toEqual({ via: 'mesh' });
  });

  it('rejects requests without signature headers (401)', async () => {
    const r = await rawRequest(base, { method: 'POST', path: '/v1/invoke', body: invokeBody('sys.info', {}) });
    expect(r.status).toBe(401);
    expect(r.json.error?.code).toBe('auth');
  });

  it('rejects a bad MAC and a body changed after signing (401)', async () => {
    const body = invokeBody('sys.info', {});
    const flipped = await signed({ path: '/v1/invoke', body, mutate: (h) => {
      const s = h[AUTH_HEADERS.signature]!;
      h[AUTH_HEADERS.signature] = (s[0] === 'a' ? 'b' : 'a') + s.slice(1);
    } });
    expect(flipped.status).toBe(401);
    expect(flipped.json.error?.message).toMatch(/bad signature/);
    const altered = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), signedBody: body });
    expect(altered.status).toBe(401);
    const queryChanged = await signed({ path: '/v1/audit?after=1', signedPath: '/v1/audit?after=0', method: 'GET' });
    expect(queryChanged.status).toBe(401);
    const control = await signed({ path: '/v1/audit?after=0', method: 'GET' });
    expect(control.status).toBe(200); // the same request unaltered passes
  });

  it('rejects a clock skew over 60 s and accepts one under it', async () => {
    const old = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), now: Date.now() - 61_000 });
    expect(old.status).toBe(401);
    expect(old.json.error?.message).toMatch(/clock/);
    const future = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), now: Date.now() + 61_000 });
    expect(future.status).toBe(401);
    const ok = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), now: Date.now() - 30_000 });
    expect(ok.status).toBe(200);
  });

  it('rejects a replayed nonce', async () => {
    const body = invokeBody('sys.info', {});
    const nonce = randomBytes(16).toString('base64url');
    const now = Date.now();
    const first = await signed({ path: '/v1/invoke', body, nonce, now });
    expect(first.status).toBe(200);
    const replay = await signed({ path: '/v1/invoke', body, nonce, now });
    expect(replay.status).toBe(401);
    expect(replay.json.error?.message).toMatch(/replayed/);
  });

  it('rejects the wrong device key and a request meant for another device', async () => {
    const wrongKey = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), secret: randomBytes(32) });
    expect(wrongKey.status).toBe(401);
    const otherDevice = await signed({ path: '/v1/invoke', body: invokeBody('sys.info', {}), device: 'dev2' });
    expect(otherDevice.status).toBe(401);
    expect(otherDevice.json.error?.message).toMatch(/serves device dev1/);
  });

  it('rejects an oversize body with 413', async () => {
    const big = JSON.stringify({ capability: 'sys.info', args: { pad: 'x'.repeat(1024 * 1024) }, actor: 'a', request_id: 'r' });
    const r = await signed({ path: '/v1/invoke', body: big });
    expect(r.status).toBe(413);
    expect(r.json.error?.code).toBe('too_large');
  });

  it('answers JSON errors for unknown endpoints, wrong methods and bad bodies', async () => {
    expect((await rawRequest(base, { method: 'GET', path: '/nope' })).status).toBe(404);
    const wrong = await rawRequest(base, { method: 'POST', path: '/health' });
    expect(wrong.status).toBe(405);
    expect(wrong.json.error?.code).toBe('usage');
    const bad = await signed({ path: '/v1/invoke', body: '{"capability":1}' });
    expect(bad.status).toBe(400);
    expect(bad.json.error?.code).toBe('usage');
  });

  it('enforces its own manifest on a signed request that bypassed the controller', async () => {
    const denied = await signed({ path: '/v1/invoke', body: invokeBody('fs.read', { path: path.join(data, 'secret.txt') }) });
    expect(denied.status).toBe(403);
    expect(denied.json.error?.code).toBe('policy_denied');
    const outside = await signed({ path: '/v1/invoke', body: invokeBody('fs.read', { path: '/etc/passwd' }) });
    expect(outside.status).toBe(403);
    const notEnabled = await signed({ path: '/v1/invoke', body: invokeBody('shell.exec', { argv: ['id'] }) });
    expect(notEnabled.status).toBe(403);
    expect(notEnabled.json.error?.message).toMatch(/not enabled on dev1/);
    const allowed = await signed({ path: '/v1/invoke', body: invokeBody('fs.read', { path: path.join(data, 'hello.txt') }) });
    expect(allowed.status).toBe(200);
    expect((allowed.json.invoke as { result: { stdout: string } }).result.stdout).toContain('hello from the device');
  });

  it('denies on the agent what the controller manifest allows, through the full invoke path', async () => {
    const res = await rt.invoker.invoke({ device: DEVICE, capability: 'shell.exec', args: { argv: ['id'] }, actor: '@test:example.org' });
    expect(res.decision).toBe('allowed'); // the controller said yes…
    expect(res.ok).toBe(false); // …the agent said no
    expect(res.error?.code).toBe('policy_denied');
    expect(res.deviceAudit).toBeDefined();
    const agentEntry = [...readJsonlEntries(files.auditFile)].find((e) => e.seq === res.deviceAudit!.seq)!;
    expect(agentEntry.decision).toBe('denied');
    expect(agentEntry.capability).toBe('shell.exec');
    const controllerEntry = rt.audit.get(DEVICE, res.audit!.seq)!;
    expect(controllerEntry.error_code).toBe('policy_denied');

    const write = await rt.invoker.invoke({ device: DEVICE, capability: 'fs.write', args: { path: '/tmp/mp-should-not-exist', content: 'x' }, actor: '@test:example.org' });
    expect(write.ok).toBe(false);
    expect(write.error?.code).toBe('policy_denied');
    expect(existsSync('/tmp/mp-should-not-exist')).toBe(false);
  });

  it('runs an approval-gated capability only with approved_by, and records the approver', async () => {
    const target = path.join(data, 'written.txt');
    const without = await signed({ path: '/v1/invoke', body: invokeBody('fs.write', { path: target, content: 'one' }) });
    expect(without.status).toBe(403);
    expect(without.json.error?.code).toBe('approval_rejected');
    expect(existsSync(target)).toBe(false);

    const r = await runner.run({ capability: 'fs.write', args: { path: target, content: 'two' }, actor: '@op:example.org', requestId: 'appr-1', approvedBy: '@boss:example.org' });
    expect(r.result.ok).toBe(true);
    expect(readFileSync(target, 'utf8')).toBe('two');
    const entries = [...readJsonlEntries(files.auditFile)].filter((e) => e.request_id === 'appr-1');
    expect(entries.map((e) => [e.decision, e.outcome])).toEqual([['approved', 'started'], ['approved', 'ok']]);
    expect(entries[0]!.reason).toBe('approved by @boss:example.org');
    expect(entries[1]!.context).toEqual({ via: 'mesh', approved_by: '@boss:example.org' });

    // approved_by never widens the manifest.
    const outside = await runner.run({ capability: 'fs.write', args: { path: '/tmp/mp-approved-outside', content: 'x' }, actor: '@op:example.org', requestId: 'appr-2', approvedBy: '@boss:example.org' });
    expect(outside.result.error?.code).toBe('policy_denied');
    expect(existsSync('/tmp/mp-approved-outside')).toBe(false);
  });

  it('serves its audit chain for the controller to verify, incrementally', async () => {
    const all = await runner.pullAudit(null, { pageSize: 3 });
    expect(all.ok).toBe(true);
    const onDisk = [...readJsonlEntries(files.auditFile)];
    expect(all.entries.length).toBe(onDisk.length);
    expect(all.head).toEqual({ seq: onDisk.at(-1)!.seq, hash: onDisk.at(-1)!.hash });
    expect(verifyEntries(onDisk).ok).toBe(true);

    await runner.run({ capability: 'sys.info', args: {}, actor: 'a', requestId: 'inc-1' });
    const more = await runner.pullAudit(all.head);
    expect(more.ok).toBe(true);
    expect(more.entries.map((e) => e.request_id)).toEqual(['inc-1', 'inc-1']);
    expect(more.entries[0]!.seq).toBe(all.head!.seq + 1);

    // A forged starting point does not verify against the real chain.
    const forged = await runner.pullAudit({ seq: all.head!.seq, hash: 'f'.repeat(64) });
    expect(forged).toMatchObject({ ok: false, kind: 'diverged', badSeq: all.head!.seq + 1 });

    const unsigned = await rawRequest(base, { method: 'GET', path: '/v1/audit?after=0' });
    expect(unsigned.status).toBe(401);
    const badQuery = await signed({ method: 'GET', path: '/v1/audit?after=-1' });
    expect(badQuery.status).toBe(400);
  });

  it('maps transport failures to clear errors: unreachable and auth', async () => {
    const deadPort = await freePort();
    const dead = new MeshRunner({ device: DEVICE, address: '127.0.0.1', port: deadPort, home: files.home });
    try {
      await expect(dead.run({ capability: 'sys.info', args: {}, actor: 'a', requestId: 'x' })).rejects.toMatchObject({
        code: 'unreachable', message: expect.stringContaining(`device ${DEVICE}: agent at 127.0.0.1:${deadPort}`) as unknown,
      });
    } finally {
      await dead.close();
    }
    const wrong = new MeshRunner({ device: DEVICE, address: '127.0.0.1', port: files.port, secret: randomBytes(32) });
    try {
      await expect(wrong.run({ capability: 'sys.info', args: {}, actor: 'a', requestId: 'y' })).rejects.toMatchObject({ code: 'auth' });
    } finally {
      await wrong.close();
    }
  });

  // Last: it edits the live log.
  it('detects a tampered JSONL line at its seq (controller verify and /health)', async () => {
    const lines = readFileSync(files.auditFile, 'utf8').split('\n');
    const idx = lines.findIndex((l) => l.includes('"capability":"fs.read"'));
    expect(idx).toBeGreaterThanOrEqual(0);
    const victim = JSON.parse(lines[idx]!) as AuditEntry;
    lines[idx] = lines[idx]!.replace('"actor":"@test:example.org"', '"actor":"@someone-else:example.org"');
    expect(lines[idx]).not.toBe(JSON.stringify(victim));
    writeFileSync(files.auditFile, lines.join('\n'));

    const local = verifyEntries(readJsonlEntries(files.auditFile));
    expect(local.ok).toBe(false);
    if (!local.ok) expect(local.badSeq).toBe(victim.seq);

    const remote = await runner.pullAudit(null);
    expect(remote.ok).toBe(false);
    if (!remote.ok) {
      expect(remote.kind).toBe('broken');
      expect(remote.badSeq).toBe(victim.seq);
      expect(remote.entries.length).toBe(victim.seq - 1);
    }
    const h = HealthResponseSchema.parse((await rawRequest(base, { method: 'GET', path: '/health' })).json);
    expect(h.audit.chain_ok).toBe(false);
    expect(h.audit.bad_seq).toBe(victim.seq);
    expect(h.ok).toBe(false);
  });
});

describe('agent bundle (dist/meshpilot-agent.mjs)', () => {
  let bfiles: AgentFiles;
  let bagent: AgentProcess;
  let brunner: MeshRunner;

  beforeAll(async () => {
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'scripts', 'bundle-agent.mjs')], { cwd: REPO_ROOT, stdio: 'pipe' });
    const port = await freePort();
    bfiles = writeAgentFiles({
      device: 'bundled', address: '127.0.0.1', port, root: path.join(root, 'b'),
      manifest: `device: bundled\nos: linux\ntransport: { kind: mesh, address: 127.0.0.1, port: ${port} }\ncapabilities:\n  sys.info: {}\n`,
      limits: { rate_per_s: 0.5, burst: 3 },
    });
    bagent = await startAgentProcess(bfiles, { mode: 'bundle' });
    brunner = new MeshRunner({ device: 'bundled', address: '127.0.0.1', port, home: bfiles.home });
  });
  afterAll(async () => {
    await brunner?.close();
    await bagent?.stop();
  });

  it('is one file without native or controller-only modules', () => {
    const text = readFileSync(BUNDLE_PATH, 'utf8');
    expect(statSync(BUNDLE_PATH).size).toBeGreaterThan(10_000);
    for (const forbidden of ['better-sqlite3', 'require("ssh2")', "from 'ssh2'", 'from "undici"', '.node"']) expect(text).not.toContain(forbidden);
    expect(text.startsWith('#!/usr/bin/env node')).toBe(true);
  });

  it('starts, reports health, runs sys.info, then rate limits (429)', async () => {
    const h = await brunner.health();
    expect(h.device).toBe('bundled');
    expect(h.ok).toBe(true);
    const r = await brunner.run({ capability: 'sys.info', args: {}, actor: 'a', requestId: 'b-1' });
    expect(r.result.ok).toBe(true);
    expect(verifyEntries(readJsonlEntries(bfiles.auditFile)).ok).toBe(true);
    // burst 3: one token used above; two more pass, the next is refused.
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await rawRequest(`http://127.0.0.1:${bfiles.port}`, { method: 'POST', path: '/v1/invoke', secret: bfiles.secret, device: 'bundled', body: invokeBody('sys.info', {}) });
      statuses.push(res.status);
    }
    expect(statuses.slice(0, 2)).toEqual([200, 200]);
    expect(statuses.slice(2)).toContain(429);
    await expect(brunner.run({ capability: 'sys.info', args: {}, actor: 'a', requestId: 'b-2' })).rejects.toMatchObject({ code: 'unreachable', message: expect.stringContaining('rate limit') as unknown });
  });

  it('prints its version and refuses to start without --config', () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(execFileSync(process.execPath, [BUNDLE_PATH, '--version'], { encoding: 'utf8' }).trim()).toBe(pkg.version);
    expect(() => execFileSync(process.execPath, [BUNDLE_PATH], { stdio: 'pipe' })).toThrow();
  });
});

describe('agent config, secrets, limits', () => {
  const base = { device: 'd1', manifest: 'm.yaml', audit_log: 'a.jsonl', secret_file: 's' };
  it('never listens on every interface unless told to', () => {
    expect(() => parseAgentConfig(JSON.stringify({ ...base, listen: { address: '0.0.0.0', port: 1 } }), '/etc/mp/agent.json')).toThrow(/allow_any_address/);
    expect(() => parseAgentConfig(JSON.stringify({ ...base, listen: { address: '::', port: 1 } }), '/etc/mp/agent.json')).toThrow(/allow_any_address/);
    const ok = parseAgentConfig(JSON.stringify({ ...base, listen: { address: '0.0.0.0', port: 1 }, allow_any_address: true }), '/etc/mp/agent.json');
    expect(ok.listen.address).toBe('0.0.0.0');
    const yaml = parseAgentConfig('device: d1\nlisten: { address: 10.1.2.3 }\nmanifest: m.yaml\naudit_log: a.jsonl\nsecret_file: s\n', '/etc/mp/agent.yaml');
    expect(yaml.manifest).toBe('/etc/mp/m.yaml');
    expect(yaml.listen.port).toBe(7420);
    expect(yaml.limits.max_body_bytes).toBe(1024 * 1024);
    expect(() => parseAgentConfig('device: d1\nlisten: { address: example.org }\nmanifest: m\naudit_log: a\nsecret_file: s\n', 'x.yaml')).toThrow(/IP address/);
    expect(() => parseAgentConfig('device: d1\nlisten: { address: 10.1.2.3 }\nmanifest: m\naudit_log: a\nsecret_file: s\nextra: 1\n', 'x.yaml')).toThrow();
  });

  it('refuses a secret file others can read, and malformed secrets', () => {
    const f = path.join(root, 'loose.secret');
    writeFileSync(f, randomBytes(32).toString('base64'), { mode: 0o644 });
    chmodSync(f, 0o644);
    expect(() => loadSecretFile(f)).toThrow(/chmod 600/);
    chmodSync(f, 0o600);
    expect(loadSecretFile(f).length).toBe(32);
    expect(() => parseSecret(Buffer.from('short'))).toThrow();
    expect(parseSecret(Buffer.from('ab'.repeat(32))).toString('hex')).toBe('ab'.repeat(32));
  });

  it('nonce cache expires old nonces and refuses when full; token bucket refills', () => {
    const c = new NonceCache(100, 1000);
    expect(c.admit('n1', 0)).toBe('ok');
    expect(c.admit('n1', 500)).toBe('replay');
    expect(c.admit('n1', 1500)).toBe('ok');
    for (let i = 0; i < 99; i++) expect(c.admit(`x${i}`, 1600)).toBe('ok');
    expect(c.admit('overflow', 1700)).toBe('full');
    expect(c.admit('later', 3000)).toBe('ok');
    // A nonce re-admitted after expiry moves to the back, so pruning still frees the expired ones.
    const d = new NonceCache(101, 1000);
    expect(d.admit('again', 0)).toBe('ok');
    for (let i = 0; i < 99; i++) expect(d.admit(`y${i}`, 500)).toBe('ok');
    expect(d.admit('again', 1400)).toBe('ok'); // expired at 1000, admitted anew until 2400
    expect(d.admit('z', 1450)).toBe('ok'); // full now
    expect(d.admit('more', 1600)).toBe('ok'); // the y* (expired at 1500) are pruned
    const b = new TokenBuckets(1, 2);
    expect([b.take('d', 0), b.take('d', 0), b.take('d', 0)]).toEqual([true, true, false]);
    expect(b.take('d', 1000)).toBe(true);
  });
});

describe('service templates', () => {
  const vars = { node: '/usr/bin/node', agent: '/opt/meshpilot/meshpilot-agent.mjs', config: '/etc/meshpilot/agent.yaml', user: 'meshpilot' };
  it('renders every kind with no placeholder left', () => {
    for (const kind of SERVICE_KINDS) {
      const v = kind === 'windows'
        ? { node: 'C:\\Program Files\\nodejs\\node.exe', agent: 'C:\\meshpilot\\meshpilot-agent.mjs', config: 'C:\\meshpilot\\agent.yaml', user: 'S-1-5-19' }
        : vars;
      const text = renderService(kind, v);
      expect(text).not.toMatch(/\{\{|\}\}/);
      expect(text).toContain('agent.yaml');
      if (kind === 'systemd') {
        expect(text).toContain('ExecStart="/usr/bin/node" "/opt/meshpilot/meshpilot-agent.mjs" --config "/etc/meshpilot/agent.yaml"');
        expect(text).toContain('User=meshpilot');
        expect(text).toContain('WorkingDirectory=/etc/meshpilot');
      }
      if (kind === 'launchd') {
        expect(text).toContain('<string>/opt/meshpilot/meshpilot-agent.mjs</string>');
        expect(text).toContain('<string>com.meshpilot.agent</string>');
        for (const m of text.matchAll(/<!--([\s\S]*?)-->/g)) expect(m[1]).not.toContain('--'); // invalid XML otherwise
      }
      if (kind === 'windows') {
        expect(text).toContain('<Command>C:\\Program Files\\nodejs\\node.exe</Command>');
        expect(text).toContain('<LogonType>ServiceAccount</LogonType>');
        const bytes = serviceFileBytes(kind, text);
        expect([bytes[0], bytes[1]]).toEqual([0xff, 0xfe]);
        expect(bytes.subarray(2).toString('utf16le')).toContain('<Task version="1.4"');
      }
    }
  });

  it('escapes values for the format and rejects unsafe ones', () => {
    const plist = renderService('launchd', { ...vars, agent: '/opt/a&b/meshpilot-agent.mjs' });
    expect(plist).toContain('<string>/opt/a&amp;b/meshpilot-agent.mjs</string>');
    const unit = renderService('systemd', { ...vars, agent: '/opt/100%/agent.mjs' });
    expect(unit).toContain('"/opt/100%%/agent.mjs"');
    expect(() => renderService('systemd', { ...vars, config: '/etc/x\nExecStartPre=/bin/sh' })).toThrow(/control characters/);
    expect(() => renderService('systemd', { ...vars, config: 'relative/agent.yaml' })).toThrow(/absolute/);
    expect(() => renderService('windows', { ...vars })).toThrow(/absolute/); // POSIX paths on Windows
  });
});

describe('meshpilot agent init', () => {
  it('writes config, manifest and secret (0600) and the controller copy of the secret', async () => {
    const home = path.join(root, 'init-home');
    const out = path.join(root, 'init-out');
    const prev = process.env['MESHPILOT_HOME'];
    process.env['MESHPILOT_HOME'] = home;
    let stdout = '';
    const io: CliIo = { out: (t) => { stdout += t; }, err: (t) => { stdout += t; }, isTTY: false };
    try {
      const code = await runCli(['agent', 'init', '--device', 'pi', '--address', '10.231.9.2', '--port', '7421', '--out', out], io);
      expect(code).toBe(0);
    } finally {
      if (prev === undefined) delete process.env['MESHPILOT_HOME'];
      else process.env['MESHPILOT_HOME'] = prev;
    }
    expect(stdout).toContain('agent.yaml');
    expect(statSync(path.join(out, 'agent.secret')).mode & 0o777).toBe(0o600);
    expect(loadSecretFile(path.join(out, 'agent.secret')).equals(loadSecretFile(path.join(home, 'keys', 'pi', 'agent.secret')))).toBe(true);
    const cfg = parseAgentConfig(readFileSync(path.join(out, 'agent.yaml'), 'utf8'), path.join(out, 'agent.yaml'));
    expect(cfg.listen).toEqual({ address: '10.231.9.2', port: 7421 });
    expect(readFileSync(path.join(home, 'manifests', 'pi.yaml'), 'utf8')).toMatch(/kind: mesh/);
    expect(readFileSync(path.join(out, 'manifest.yaml'), 'utf8')).toMatch(/device: pi/);
    expect(stdout).not.toContain(loadSecretFile(path.join(out, 'agent.secret')).toString('base64'));
  });
});
