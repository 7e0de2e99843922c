import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { argInfos, chatHelpLines, defineCommand, dispatchChat, forSurface, defineGroup, parseChatArgs, usageOf, validateArgs, type AnyCommand, type ChatCaller, type Permission } from '../capabilities/commands.js';
import { DEVICE_COMMANDS } from '../bots/device-commands.js';

interface Ctx { calls: unknown[] }
const N = 'with n from 1 to 200';

const audit = defineCommand({
  name: 'audit', summary: 'the last n audit entries', permission: 'operator', surfaces: ['operator-chat', 'cli'],
  args: z.object({
    device: z.string().regex(/^[a-z0-9-]+$/).describe('a device'),
    n: z.coerce.number({ error: N }).int({ error: N }).min(1, { error: N }).max(200, { error: N }).default(10).describe('how many'),
    json: z.boolean().optional().describe('print JSON'),
    limit: z.number().max(3).optional(),
  }),
  positional: ['device', 'n'],
  run: (a, c: Ctx) => { c.calls.push(a); },
});
const add = defineCommand({
  name: 'add-pc', summary: 'enroll', permission: 'operator', surfaces: ['operator-chat'], usage: '…',
  args: z.object({ words: z.array(z.string()) }), positional: ['words'],
  run: (a, c: Ctx) => { c.calls.push(a.words); },
});
const table = [audit, add] as unknown as AnyCommand<Ctx>[];

function caller(may = true): ChatCaller & { replies: string[] } {
  const replies: string[] = [];
  return { may: (_p: Permission) => may, replies, reply: async (t: string) => { replies.push(t); } };
}

describe('command declarations', () => {
  it('derive the argument list: positional first, then options, with required, default, list, boolean and help', () => {
    const infos = argInfos(audit as unknown as AnyCommand<unknown>);
    expect(infos.map((a) => [a.name, a.positional, a.required])).toEqual([['device', true, true], ['n', true, false], ['json', false, false], ['limit', false, false]]);
    expect(infos[1]).toMatchObject({ default: 10, description: 'how many' });
    expect(infos[2]).toMatchObject({ boolean: true, description: 'print JSON' });
    expect(argInfos(add as unknown as AnyCommand<unknown>)[0]).toMatchObject({ list: true, required: true });
    expect(usageOf(audit as unknown as AnyCommand<unknown>)).toBe('<device> [n] [json=…] [limit=…]');
    expect(usageOf(add as unknown as AnyCommand<unknown>)).toBe('…');
  });

  it('a positional that is no field is a declaration error', () => {
    const bad = { ...audit, positional: ['nope'] } as unknown as AnyCommand<unknown>;
    expect(() => argInfos(bad)).toThrow(/positional "nope"/);
  });

  it('parse errors are one line: the usage, then what is wrong (nothing more when an argument is missing)', () => {
    const def = audit as unknown as AnyCommand<unknown>;
    expect(parseChatArgs(def, [])).toEqual({ ok: false, message: 'Usage: !audit <device> [n] [json=…] [limit=…]' });
    expect(parseChatArgs(def, ['web', 'zero'])).toEqual({ ok: false, message: `Usage: !audit <device> [n] [json=…] [limit=…] ${N}` });
    expect(parseChatArgs(def, ['web', '500'])).toEqual({ ok: false, message: `Usage: !audit <device> [n] [json=…] [limit=…] ${N}` });
    // zod's own message is named by its argument.
    const limit = parseChatArgs(def, ['web', 'limit=9']);
    expect(limit.ok).toBe(false);
    if (!limit.ok) {
      expect(limit.message).toMatch(/^Usage: !audit .* \(limit: .*3.*\)$/);
      expect(limit.message).not.toContain('\n');
    }
    const dev = parseChatArgs(def, ['Web!']);
    expect(dev.ok || dev.message.split('\n')).toHaveLength(1);
  });

  it('parses positional, key=value (coerced by the schema), defaults and a trailing list', () => {
    expect(parseChatArgs(audit as unknown as AnyCommand<unknown>, ['web', 'json=yes'])).toEqual({ ok: true, args: { device: 'web', n: 10, json: true } });
    expect(parseChatArgs(audit as unknown as AnyCommand<unknown>, ['web', '5', 'extra'])).toEqual({ ok: true, args: { device: 'web', n: 5 } });
    // A key that is no declared field stays a word (add-pc's --via=wg, cap's path=/var).
    expect(parseChatArgs(add as unknown as AnyCommand<unknown>, ['laptop', '--via=wg', 'x=y'])).toEqual({ ok: true, args: { words: ['laptop', '--via=wg', 'x=y'] } });
  });

  it('validateArgs tells a missing argument, the argument, and whether the message is the schema\'s own', () => {
    const v = validateArgs(audit as unknown as AnyCommand<unknown>, { n: '3' });
    expect(v).toMatchObject({ ok: false, issue: { arg: 'device', missing: true, custom: false } });
    const w = validateArgs(audit as unknown as AnyCommand<unknown>, { device: 'a', n: 'x' });
    expect(w).toMatchObject({ ok: false, issue: { arg: 'n', missing: false, custom: true, message: N } });
  });

  it('help is derived from the declarations', () => {
    expect(chatHelpLines(table)).toEqual(['!audit <device> [n] [json=…] [limit=…] — the last n audit entries', '!add-pc … — enroll']);
    expect(forSurface([...table, defineGroup('x', 'y')], 'cli').map((c) => c.name)).toEqual(['audit', 'x']);
  });

  it('dispatch checks the permission before parsing and before the handler runs', async () => {
    const ctx: Ctx = { calls: [] };
    const denied = caller(false);
    expect(await dispatchChat(table, '!audit web 5', denied, ctx)).toBe(true);
    expect(denied.replies).toEqual(['!audit needs the operator permission.']);
    expect(ctx.calls).toEqual([]);
    const c = caller();
    await dispatchChat(table, '!AUDIT web 5', c, ctx);
    expect(ctx.calls).toEqual([{ device: 'web', n: 5 }]);
    await dispatchChat(table, '!audit', c, ctx);
    await dispatchChat(table, '!nope x', c, ctx);
    expect(c.replies).toEqual(['Usage: !audit <device> [n] [json=…] [limit=…]', 'Unknown command !nope. Send !help for the list.']);
    expect(ctx.calls).toHaveLength(1);
    expect(await dispatchChat(table, 'plain words', c, ctx)).toBe(false);
  });

  it('the device bot table: help lines as before, !audit range error as before', () => {
    expect(chatHelpLines(DEVICE_COMMANDS)).toEqual([
      '!help [capability] — this list, or one capability\'s arguments',
      '!status — sys.info + sys.health of this device',
      '!cap <capability> key=value … — run one capability, e.g. !cap fs.list path=/var/log',
      '!audit [n] — the last n audit entries (default 10)',
      '!approve [id] — approve a pending request (or react ✅)',
      '!reject [id] — reject a pending request (or react ❌)',
      '!reset — forget this conversation\'s history',
      '!budget — LLM tokens used today and the daily budget',
      '!dashboard — a one-time login link for the web dashboard, sent to you in our DM (works once, for 5 minutes)',
      '!vm new <name> <image=…> [cpus=…] [memory_mb=…] [disk_mb=…] [ttl_h=…] [ports=…] [command=…] — create and start a VM',
      '!vm ls [all=…] [owner=…] [size=…] — list the VMs with owner, ports and expiry',
      '!vm exec <name> <argv…> [timeout_s=…] — run a program in a VM (argv, no shell)',
      '!vm stop <name> — stop a VM (its disk stays)',
      '!vm start <name> — start a stopped VM',
      '!vm logs <name> [tail=…] — the last lines of a VM\'s output',
      '!vm rm <name> [expired_before=…] — remove a VM (already gone counts as removed)',
      '!vm share <name> <port> [public=…] [to=…] — share a VM port through the launcher (/s/<id>/): public, or to people who get a login link',
      '!vm unshare <name> [port] — stop sharing a VM port (the link answers 404 at once)',
      '!vm image import <path> <image> — make an image from a rootfs tarball on the device',
    ]);
    const auditCmd = DEVICE_COMMANDS.find((c) => c.name === 'audit')! as AnyCommand<unknown>;
    expect(parseChatArgs(auditCmd, ['0'])).toEqual({ ok: false, message: 'Usage: !audit [n] with n from 1 to 200' });
    expect(parseChatArgs(auditCmd, [])).toEqual({ ok: true, args: { n: 10 } });
  });
});
