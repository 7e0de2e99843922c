/**
 * Entry point of dist/meshpilot-agent.mjs (scripts/bundle-agent.mjs):
 *   node meshpilot-agent.mjs --config /etc/meshpilot/agent.yaml
 * `meshpilot agent --config <file>` runs the same code from the sources (launcher/commands/agent.ts).
 */
import { loadAgentConfig } from './config.js';
import { agentVersion, startAgent, type RunningAgent } from './server.js';

const USAGE = 'usage: meshpilot-agent --config <file.yaml|file.json>\n';

/** Starts the agent and stops it on SIGINT/SIGTERM. Resolves with the running agent. */
export async function runAgent(configFile: string): Promise<RunningAgent> {
  const config = loadAgentConfig(configFile);
  const agent = await startAgent(config);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void agent.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return agent;
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--version')) {
    process.stdout.write(`${agentVersion()}\n`);
    return 0;
  }
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  const i = argv.indexOf('--config');
  const file = i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith('--config='))?.slice('--config='.length);
  if (!file) {
    process.stderr.write(USAGE);
    return 2;
  }
  await runAgent(file);
  return -1; // keeps running
}

// Runs only as the bundle's entry (the CLI imports runAgent without starting anything).
if ((globalThis as { __MESHPILOT_AGENT_BUNDLE__?: boolean }).__MESHPILOT_AGENT_BUNDLE__ === true) {
  main(process.argv.slice(2)).then((code) => {
    if (code >= 0) process.exitCode = code;
  }, (err: unknown) => {
    const e = err as { code?: string; message?: string };
    process.stderr.write(`meshpilot-agent: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
    process.exit(1);
  });
}
