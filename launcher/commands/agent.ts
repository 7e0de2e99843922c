/**
 * `meshpilot agent --config <file>`      run the device agent from the sources (the bundle runs the same code)
 * `meshpilot agent init --device d --address ip --port p --out dir`
 *                                         write an agent config, a secret (0600), and a manifest copy
 *                                         for the device, and the controller's copy of the secret
 * `meshpilot agent service --kind systemd|launchd|windows --agent <path> --agent-config <path>`
 *                                         print (or --out write) a service definition that starts it at boot
 * Declarations only at load; each handler imports what it runs.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { z } from 'zod';
import { defineCommand } from '../../capabilities/commands.js';
import { DEVICE_NAME } from '../../capabilities/names.js';
import { UsageError, type CliEntry, type CommandContext } from './context.js';

const cli = ['cli'] as const;
const PORT = '--port must be 1-65535';

/** node:net's isIP, loaded when an address is checked: node:net costs every command ~2 ms to load. */
const isIP = (a: string): number => (createRequire(import.meta.url)('node:net') as typeof import('node:net')).isIP(a);

export const AGENT_COMMANDS: CliEntry[] = [
  defineCommand({
    name: 'agent', summary: 'the device agent: run it (--config), set one up (init), or print its boot service (service)', permission: 'operator', surfaces: cli,
    args: () => z.object({ config: z.string().optional().describe('agent config (YAML or JSON)') }),
    cli: { flags: { config: '--config <file>' } },
    run: async (opts, _ctx: CommandContext) => {
      if (!opts.config) throw new UsageError('meshpilot agent needs --config <file> (or a subcommand: init, service)');
      const { runAgent } = await import('../../capabilities/agent/main.js');
      await runAgent(opts.config);
    },
  }),
  defineCommand({
    name: 'agent init', summary: 'write agent.yaml, agent.secret and manifest.yaml for a device into --out, and the controller copy of the secret', permission: 'operator', surfaces: cli,
    args: () => z.object({
      device: z.string().regex(DEVICE_NAME, { error: '--device must be 1-32 characters of a-z, 0-9 and -' }).describe('device name'),
      address: z.string().refine((a) => isIP(a) !== 0, { error: '--address must be an IP address' }).describe("the device's mesh (WireGuard) IP the agent listens on"),
      port: z.coerce.number({ error: PORT }).int({ error: PORT }).min(1, { error: PORT }).max(65535, { error: PORT }).default(7420).describe('agent port'),
      out: z.string().describe('directory to write (copy it to the device, e.g. /etc/meshpilot)'),
      force: z.boolean().optional().describe('overwrite agent.yaml and manifest.yaml if present'),
    }),
    cli: { flags: { device: '--device <device>', address: '--address <ip>', port: '--port <port>', out: '--out <dir>' } },
    run: async (opts, ctx: CommandContext) => {
      const { renderTemplate } = await import('../../capabilities/manifest.js');
      const { generateSecret, loadSecretFile, writeSecretFile } = await import('../../capabilities/agent/auth.js');
      const { ensureHome, resolveHome, templateText, thisOs } = await import('../../capabilities/home.js');
      const { agentSecretPath } = await import('../../capabilities/agent/client.js');
      // yaml is CommonJS: in the bundle a dynamic import of it has `default` only (its named exports were undefined there)
      const { stringify: toYaml } = (await import('yaml')).default;
      const { port } = opts;
      const out = path.resolve(opts.out);
      mkdirSync(out, { recursive: true, mode: 0o700 });
      const configFile = path.join(out, 'agent.yaml');
      const manifestFile = path.join(out, 'manifest.yaml');
      const secretFile = path.join(out, 'agent.secret');
      for (const f of [configFile, manifestFile]) {
        if (existsSync(f) && !opts.force) throw new UsageError(`${f} exists (use --force to overwrite it)`);
      }
      const { home } = ensureHome(resolveHome());
      // One secret per device, shared by the controller and the agent: reuse the controller's when present.
      const controllerSecret = agentSecretPath(opts.device, home.root);
      let secret: Buffer;
      if (existsSync(controllerSecret)) secret = loadSecretFile(controllerSecret);
      else {
        secret = generateSecret();
        writeSecretFile(controllerSecret, secret);
      }
      if (!existsSync(secretFile)) writeSecretFile(secretFile, secret);
      else if (!loadSecretFile(secretFile).equals(secret)) throw new UsageError(`${secretFile} holds a different secret than ${controllerSecret}; remove one of them`);

      const transport = { kind: 'mesh' as const, address: opts.address, port };
      const controllerManifest = path.join(home.manifests, `${opts.device}.yaml`);
      if (existsSync(controllerManifest)) copyFileSync(controllerManifest, manifestFile);
      else {
        const text = renderTemplate(templateText(`${thisOs()}.readonly`), opts.device, transport);
        writeFileSync(controllerManifest, text, { mode: 0o600 });
        writeFileSync(manifestFile, text, { mode: 0o600 });
      }
      const config = {
        device: opts.device,
        listen: { address: opts.address, port },
        manifest: 'manifest.yaml',
        audit_log: 'audit.jsonl',
        secret_file: 'agent.secret',
        limits: { max_body_bytes: 1048576, rate_per_s: 20, burst: 40 },
      };
      writeFileSync(configFile, `# meshpilot agent for ${opts.device}; relative paths are relative to this file.\n${toYaml(config)}`, { mode: 0o600 });
      ctx.io.out(`wrote ${configFile}, ${manifestFile}, ${secretFile}\n`);
      ctx.io.out(`controller: ${controllerManifest} (transport mesh ${opts.address}:${port}), secret ${controllerSecret}\n`);
      ctx.io.out(`next: copy ${out} to the device (keep agent.secret mode 0600) and run: node meshpilot-agent.mjs --config <dir>/agent.yaml\n`);
    },
  }),
  defineCommand({
    name: 'agent service', summary: 'render the boot service definition (systemd unit, launchd plist, Task Scheduler XML)', permission: 'operator', surfaces: cli,
    args: () => z.object({
      kind: z.enum(['systemd', 'launchd', 'windows']).describe('service manager'),
      agent: z.string().describe('absolute path of meshpilot-agent.mjs on the device'),
      agentConfig: z.string().describe('absolute path of the agent config on the device (--config belongs to `meshpilot agent`)'),
      node: z.string().default(process.execPath).describe('absolute path of node on the device'),
      user: z.string().optional().describe('account the agent runs as'),
      out: z.string().optional().describe('write to this file instead of printing'),
    }),
    cli: { flags: { kind: '--kind <kind>', agent: '--agent <path>', agentConfig: '--agent-config <path>', node: '--node <path>', user: '--user <user>', out: '--out <file>' } },
    run: async (opts, ctx: CommandContext) => {
      const { renderService, serviceFileBytes, SERVICE_FILES } = await import('../../capabilities/agent/services.js');
      let text: string;
      try {
        text = renderService(opts.kind, { node: opts.node, agent: opts.agent, config: opts.agentConfig, ...(opts.user ? { user: opts.user } : {}) });
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      if (opts.out) {
        writeFileSync(opts.out, serviceFileBytes(opts.kind, text), { mode: 0o644 });
        ctx.io.out(`wrote ${opts.out}; install as ${SERVICE_FILES[opts.kind].installAs}\n`);
      } else ctx.io.out(text);
    },
  }),
];
