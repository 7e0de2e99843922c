import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatIssue, loadManifest, parseManifest, renderTemplate } from '../capabilities/manifest.js';
import { TEMPLATES_DIR } from '../capabilities/home.js';

describe('manifest parsing', () => {
  it('parses the documented shape with defaults', () => {
    const r = parseManifest(`device: local
os: linux
transport: { kind: local }
operators: ["@lucas:example.org"]
limits: { timeout_s: 30, max_output_bytes: 65536 }
capabilities:
  sys.info: {}
  fs.list: { paths_allowed: ["~/**", "/var/log/**"] }
  shell.exec: { binaries: ["uptime", "df", "systemctl"], approval: risky }
`, 'local.yaml');
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.manifest.capabilities['shell.exec']).toEqual({ binaries: ['uptime', 'df', 'systemctl'], approval: 'risky' });
      expect(r.manifest.hash).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('names file, line and field for a bad path pattern', () => {
    const text = [
      'device: local',          // 1
      'capabilities:',          // 2
      '  fs.read:',             // 3
      '    paths_allowed:',     // 4
      '      - "~/**"',         // 5
      '      - "var/log/**"',   // 6
    ].join('\n');
    const r = parseManifest(text, '/x/local.yaml');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues.map(formatIssue)).toEqual(['local.yaml:6 capabilities.fs.read.paths_allowed[1]: must be an absolute path or ~/… (or **/… for "anywhere")']);
  });

  it('reports unknown capabilities and fields on their own lines', () => {
    const r = parseManifest('device: local\ncapabilities:\n  sys.info: {}\n  fs.reed: {}\n  fs.list: { paths_allowd: ["/x"] }\n', 'm.yaml');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      const lines = r.issues.map(formatIssue);
      expect(lines.some((l) => l.startsWith('m.yaml:4 capabilities.fs.reed: unknown capability (known: '))).toBe(true);
      expect(lines).toContain('m.yaml:5 capabilities.fs.list.paths_allowd: unknown field');
      expect(lines.some((l) => l.startsWith('m.yaml:5 capabilities.fs.list.paths_allowed:'))).toBe(true);
    }
  });

  it('requires shell.eval to be enabled explicitly, and validates names and operators', () => {
    const r = parseManifest('device: Bad_Name\noperators: [lucas]\ncapabilities:\n  shell.eval: {}\n', 'm.yaml');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      const text = r.issues.map(formatIssue).join('\n');
      expect(text).toContain('m.yaml:1 device: must be 1-32 characters');
      expect(text).toContain('m.yaml:2 operators[0]: must be a Matrix ID');
      expect(text).toContain('shell.eval.enabled: shell.eval stays disabled unless the manifest says enabled: true');
    }
  });

  it('checks each named capability\'s options whichever manifests were parsed before (the schema follows the names)', () => {
    const ok = parseManifest('device: a\ncapabilities:\n  sys.info: {}\n', 'a.yaml');
    expect(ok.ok).toBe(true);
    // fs.read was not named before: its options are still checked, on their line
    const bad = parseManifest('device: b\ncapabilities:\n  sys.info: {}\n  fs.read: { approval: never }\n', 'b.yaml');
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.issues.map(formatIssue)).toEqual(['b.yaml:4 capabilities.fs.read.paths_allowed: Invalid input: expected array, received undefined']);
    // and the same set again, fixed: cached schema, same checks
    const fixed = parseManifest('device: b\ncapabilities:\n  fs.read: { paths_allowed: ["/tmp/**"] }\n  sys.info: {}\n  nope.cap: {}\n', 'b.yaml');
    expect(fixed.ok).toBe(false);
    if (!fixed.ok) {
      expect(fixed.issues).toHaveLength(1);
      expect(fixed.issues[0]).toMatchObject({ line: 5, field: 'capabilities.nope.cap' });
      expect(fixed.issues[0]!.message).toMatch(/^unknown capability \(known: .*fs\.read.*sys\.info/);
    }
    const keys = parseManifest('device: c\ncapabilities:\n  sys.info: {}\n  fs.read: { paths_allowed: ["/tmp/**"] }\n', 'c.yaml');
    expect(keys.ok && Object.keys(keys.manifest.capabilities)).toEqual(['fs.read', 'sys.info']);
  });

  it('reports YAML syntax errors with a line', () => {
    const r = parseManifest('device: local\ncapabilities:\n  sys.info: {\n', 'm.yaml');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues[0]?.message).toMatch(/^YAML syntax/);
  });

  it('a missing file is an issue, not a throw', () => {
    const r = loadManifest('/nonexistent/x.yaml');
    expect(r).toEqual({ ok: false, issues: [{ file: '/nonexistent/x.yaml', line: null, field: '', message: 'file not found' }] });
  });
});

describe('templates', () => {
  const files = readdirSync(TEMPLATES_DIR).filter((f) => f.endsWith('.yaml'));
  it('ships readonly and operator templates for linux, darwin and windows, plus ssh.readonly', () => {
    for (const os of ['linux', 'darwin', 'windows']) {
      expect(files).toContain(`${os}.readonly.yaml`);
      expect(files).toContain(`${os}.operator.yaml`);
    }
    expect(files).toContain('ssh.readonly.yaml');
  });

  it.each(files)('%s is valid and renders for a device, keeping comments', (file) => {
    const text = readFileSync(path.join(TEMPLATES_DIR, file), 'utf8');
    const rendered = renderTemplate(text, 'pi-kitchen');
    const r = parseManifest(rendered, 'pi-kitchen.yaml');
    if (!r.ok) throw new Error(r.issues.map(formatIssue).join('\n'));
    expect(r.manifest.device).toBe('pi-kitchen');
    expect(rendered.split('\n')[0]).toMatch(/^#/);
  });

  it('readonly templates enable no write, exec-with-approval or admin capability', () => {
    for (const file of files.filter((f) => f.includes('readonly'))) {
      const r = parseManifest(readFileSync(path.join(TEMPLATES_DIR, file), 'utf8'), file);
      if (!r.ok) throw new Error(file);
      const caps = Object.keys(r.manifest.capabilities);
      for (const forbidden of ['fs.write', 'fs.delete', 'proc.kill', 'shell.eval', 'pkg.install', 'pkg.upgrade', 'svc.restart', 'docker.restart']) {
        expect(caps, file).not.toContain(forbidden);
      }
    }
  });
});
