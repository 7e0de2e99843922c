/**
 * vm.* capabilities over an in-memory backend, declared like capabilities/catalog/vm.ts (same names,
 * the `owner` contract of capabilities/vm/quota.ts): for permission and quota tests that need no podman.
 */
import { z } from 'zod';
import { defineCapability, failResult, okResult, type AnyCapability } from '../../capabilities/capability.js';

export interface FakeVm { name: string; owner: string; state: 'running' | 'stopped' }

export function fakeVmFamily(opts: { failCreate?: () => boolean; createDelayMs?: number } = {}) {
  const vms = new Map<string, FakeVm>();
  const name = z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/);
  const one = z.object({ name }).strict();
  const find = (n: string) => vms.get(n);
  const defs: AnyCapability[] = [
    defineCapability({
      name: 'vm.new', description: 'create a VM', risk: 'write',
      input: z.object({ name, image: z.string().default('busybox'), cpus: z.number().default(1), memory_mb: z.number().int().default(256), disk_mb: z.number().int().default(1024), ttl_h: z.number().default(1), owner: z.string().max(256).optional() }).strict(),
      run: async (a) => {
        if (opts.createDelayMs) await new Promise((r) => setTimeout(r, opts.createDelayMs));
        if (opts.failCreate?.() || vms.has(a.name)) return failResult({ code: 'exec_failed', message: `cannot create ${a.name}` });
        vms.set(a.name, { name: a.name, owner: a.owner ?? '?', state: 'running' });
        return okResult({ durationMs: 1, stdout: `created ${a.name}` });
      },
    }),
    defineCapability({
      name: 'vm.ls', description: 'list VMs', risk: 'read',
      input: z.object({ owner: z.string().max(256).optional() }).strict(),
      run: async (a) => {
        const list = [...vms.values()].filter((v) => a.owner === undefined || v.owner === a.owner);
        return okResult({ durationMs: 1, stdout: list.map((v) => `${v.name} ${v.owner} ${v.state}`).join('\n'), data: list });
      },
    }),
    defineCapability({
      name: 'vm.rm', description: 'remove a VM', risk: 'write', input: one,
      run: async (a) => { vms.delete(a.name); return okResult({ durationMs: 1, stdout: `removed ${a.name}` }); },
    }),
    defineCapability({
      name: 'vm.exec', description: 'run argv in a VM', risk: 'exec', input: z.object({ name, argv: z.array(z.string()).min(1) }).strict(),
      run: async (a) => (find(a.name) ? okResult({ durationMs: 1, stdout: a.argv.join(' ') }) : failResult({ code: 'not_found', message: `no VM ${a.name}` })),
    }),
    ...(['stop', 'start', 'logs'] as const).map((verb) => defineCapability({
      name: `vm.${verb}`, description: `${verb} a VM`, risk: verb === 'logs' ? 'read' : 'write', input: one,
      run: async (a) => {
        const vm = find(a.name);
        if (!vm) return failResult({ code: 'not_found', message: `no VM ${a.name}` });
        if (verb !== 'logs') vm.state = verb === 'stop' ? 'stopped' : 'running';
        return okResult({ durationMs: 1, stdout: `${verb} ${a.name}` });
      },
    })),
    defineCapability({ name: 'sys.info', description: 'facts', risk: 'read', input: z.object({}).strict(), run: async () => okResult({ durationMs: 1, stdout: 'linux' }) }),
  ];
  return { defs, vms };
}
