/**
 * The command families the HTTP API derives its routes from (launcher/http/api/commands.ts): the CLI's
 * table (index.ts) without the launcher's own commands (up, reload) and `dashboard`, which start or
 * point at the server itself: importing them from the server would be an import cycle
 * (up → the HTTP server → this table → up). Which of these commands are routes is each declaration's
 * `surfaces`; test/api-commands.test.ts checks that no command outside this table has `'http'`.
 */
import type { CliEntry } from './context.js';
import { AGENT_COMMANDS } from './agent.js';
import { AUDIT_COMMANDS } from './audit.js';
import { DEVICE_COMMANDS } from './devices.js';
import { ENROLL_COMMANDS } from './addpc.js';
import { HEALTH_COMMANDS } from './health.js';
import { SETUP_COMMANDS } from './setup.js';
import { SSH_COMMANDS } from './ssh.js';
import { TOKEN_COMMANDS } from './token.js';
import { VM_COMMANDS } from './vm.js';
import { WORKSPACE_COMMANDS } from './workspace.js';

export const HTTP_COMMAND_TABLE: readonly CliEntry[] = [
  ...DEVICE_COMMANDS, ...AUDIT_COMMANDS, ...AGENT_COMMANDS, ...SSH_COMMANDS, ...SETUP_COMMANDS, ...HEALTH_COMMANDS, ...ENROLL_COMMANDS, ...TOKEN_COMMANDS, ...VM_COMMANDS, ...WORKSPACE_COMMANDS,
];
