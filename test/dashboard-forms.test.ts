/**
 * The dashboard's capability forms (launcher/http/dashboard/cap-form.ts), generated from each
 * capability's zod schema: every built-in capability renders one field per argument with the right
 * control, and what a form submits comes back as arguments the same schema accepts (or refuses).
 */
import { describe, expect, it } from 'vitest';
import { toJsonSchema } from '../capabilities/capability.js';
import { builtinRegistry } from '../capabilities/registry.js';
import { argsFromForm, capForm } from '../launcher/http/dashboard/cap-form.js';

const session = { actor: 'cli:tester', csrf: 'c'.repeat(43), expiresMs: Date.now() + 60_000 };
const reg = builtinRegistry();
const def = (name: string) => reg.get(name)!;

describe('capability forms from the zod schemas', () => {
  it('renders every built-in capability: one named field per argument, required ones marked', async () => {
    for (const d of reg.all()) {
      const html = String(await capForm('box', d, session));
      const schema = toJsonSchema(d) as { properties?: Record<string, unknown>; required?: string[] };
      for (const name of Object.keys(schema.properties ?? {})) expect(html, `${d.name}.${name}`).toContain(`name="${name}"`);
      for (const name of schema.required ?? []) expect(html, `${d.name}.${name} required`).toMatch(new RegExp(`name="${name}"[^>]*required`));
      expect(html).toContain(`name="_capability" value="${d.name}"`);
      expect(html).toContain(`name="_csrf" value="${session.csrf}"`);
    }
  });

  it('picks the control from the schema: select for enums and booleans, number with bounds, textarea for lists and maps', async () => {
    const kill = String(await capForm('box', def('proc.kill'), session));
    expect(kill).toMatch(/<input id="f-pid" name="pid" type="number" step="1" min="0" max="2147483647" required>/);
    expect(kill).toMatch(/<select id="f-signal" name="signal">.*<option value="TERM" selected>TERM<\/option>/s);
    const ps = String(await capForm('box', def('docker.ps'), session));
    expect(ps).toMatch(/<select id="f-all" name="all"><option value="">\(default\)<\/option><option value="true">true<\/option><option value="false">false<\/option>/);
    const exec = String(await capForm('box', def('shell.exec'), session));
    expect(exec).toMatch(/<textarea id="f-argv" name="argv"[^>]*placeholder="one item per line"[^>]*required>/);
    expect(exec).toMatch(/<textarea id="f-env" name="env"[^>]*KEY=value/);
  });

  it('turns submitted fields into arguments the schema accepts; empty fields take the defaults', () => {
    const exec = argsFromForm(def('shell.exec'), { argv: 'echo\r\nhello, world', env: 'A=1\nB=x=y', cwd: '' });
    expect(exec).toEqual({ ok: true, args: { argv: ['echo', 'hello, world'], env: { A: '1', B: 'x=y' } } });
    expect(def('shell.exec').input.safeParse((exec as { args: unknown }).args).success).toBe(true);
    const ps = argsFromForm(def('docker.ps'), { all: 'false' });
    expect(ps).toEqual({ ok: true, args: { all: false } });
    const kill = argsFromForm(def('proc.kill'), { pid: '4242', signal: 'HUP' });
    expect(kill).toEqual({ ok: true, args: { pid: 4242, signal: 'HUP' } });
    expect(def('proc.kill').input.safeParse((kill as { args: unknown }).args).success).toBe(true);
    const list = argsFromForm(def('fs.list'), { path: '/tmp', limit: '', hidden: '' });
    expect(def('fs.list').input.parse((list as { args: unknown }).args)).toMatchObject({ path: '/tmp', limit: 1000, hidden: true });
  });

  it('what the schema refuses stays refused (the form does not coerce it into something valid)', () => {
    const kill = argsFromForm(def('proc.kill'), { pid: 'twelve' });
    expect(def('proc.kill').input.safeParse((kill as { args: unknown }).args).success).toBe(false);
    expect(argsFromForm(def('shell.exec'), { argv: 'ls', env: 'no-equals-sign' })).toEqual({ ok: false, message: 'env: expected KEY=value per line, got "no-equals-sign"' });
  });
});
