/**
 * Every CLI command, in `--help` order. Each family file declares its commands (capabilities/commands.ts)
 * and imports its code inside the handlers, so loading this list loads no command's code. A new
 * family is a file here plus its tests.
 */
import type { CliEntry } from './context.js';
import { AGENT_COMMANDS } from './agent.js';
import { AUDIT_COMMANDS } from './audit.js';
import { DASHBOARD_COMMANDS } from './dashboard.js';
import { DEVICE_COMMANDS } from './devices.js';
import { ENROLL_COMMANDS } from './addpc.js';
import { HEALTH_COMMANDS } from './health.js';
import { LAUNCHER_COMMANDS } from './launcher.js';
import { SETUP_COMMANDS } from './setup.js';
import { SSH_COMMANDS } from './ssh.js';
import { TOKEN_COMMANDS } from './token.js';
import { VM_COMMANDS } from './vm.js';
import { WORKSPACE_COMMANDS } from './workspace.js';

const [up, reload] = LAUNCHER_COMMANDS as [CliEntry, CliEntry];

export const CLI_COMMANDS: readonly CliEntry[] = [
  up, ...DEVICE_COMMANDS, ...AUDIT_COMMANDS, ...AGENT_COMMANDS, ...SSH_COMMANDS, reload, ...SETUP_COMMANDS, ...HEALTH_COMMANDS, ...ENROLL_COMMANDS, ...DASHBOARD_COMMANDS, ...TOKEN_COMMANDS, ...VM_COMMANDS, ...WORKSPACE_COMMANDS,
];
