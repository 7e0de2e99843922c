/**
 * `meshpilot agent --config <file>`      run the device agent from the sources (the bundle runs the same code)
 * `meshpilot agent init --device d --address ip --port p --out dir`
 *                                         write an agent config, a secret (0600), and a manifest copy
 *                                         for the device, and the controller's copy of the secret
 * `meshpilot agent service --kind systemd|launchd|windows --agent <path> --agent-config <path>`
 *                                         print (or --out write) a service definition that starts it at boot
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { Option, type Command } from 'commander';
import { stringify as toYaml } from 'yaml';
import { generateSecret, loadSecretFile, writeSecretFile } from '../../capabilities/agent/auth.js';
import { renderService, serviceFileBytes, SERVICE_FILES, type ServiceKind } from '../../capabilities/agent/services.js';
import { ensureHome, resolveHome, templateText, thisOs } from '../../capabilities/home.js';
import { DEVICE_NAME, renderTemplate } from '../../capabilities/manifest.js';
import { agentSecretPath } from '../../capabilities/agent/client.js';
import { UsageError, type CommandContext } from '../cli.js';

export function register(program: Command, ctx: CommandContext): void {
  const agent = program.command('agent')
    .description('the device agent: run it (--config), set one up (init), or print its boot service (service)')
    .option('--config <file>', 'agent config (YAML or JSON)')
    .action(async (opts: { config?: string }) => {
      if (!opts.config) throw new UsageError('meshpilot agent needs --config <file> (or a subcommand: init, service)');
      const { runAgent } = await import('../../capabilities/agent/main.js');
      await runAgent(opts.config);
    });

  agent.command('init')
    .description('write agent.yaml, agent.secret and manifest.yaml for a device into --out, and the controller copy of the secret')
    .requiredOption('--device <device>', 'device name')
    .requiredOption('--address <ip>', "the device's mesh (WireGuard) IP the agent listens on")
    .option('--port <port>', 'agent port', '7420')
    .requiredOption('--out <dir>', 'directory to write (copy it to the device, e.g. /etc/meshpilot)')
    .option('--force', 'overwrite agent.yaml and manifest.yaml if present')
    .action((opts: { device: string; address: string; port: string; out: string; force?: boolean }) => {
      if (!DEVICE_NAME.test(opts.device)) throw new UsageError('--device must be 1-32 characters of a-z, 0-9 and -');
      if (isIP(opts.address) === 0) throw new UsageError('--address must be an IP address');
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError('--port must be 1-65535');
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
    });

  agent.command('service')
    .description('render the boot service definition (systemd unit, launchd plist, Task Scheduler XML)')
    .addOption(new Option('--kind <kind>', 'service manager').choices(['systemd', 'launchd', 'windows']).makeOptionMandatory())
    .requiredOption('--agent <path>', 'absolute path of meshpilot-agent.mjs on the device')
    .requiredOption('--agent-config <path>', 'absolute path of the agent config on the device (--config belongs to `meshpilot agent`)')
    .option('--node <path>', 'absolute path of node on the device', process.execPath)
    .option('--user <user>', 'account the agent runs as')
    .option('--out <file>', 'write to this file instead of printing')
    .action((opts: { kind: ServiceKind; agent: string; agentConfig: string; node: string; user?: string; out?: string }) => {
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
    });
}
