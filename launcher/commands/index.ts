/**
 * Subcommands that live in their own modules. Each exports `register(program, ctx)`.
 */
import type { Command } from 'commander';
import type { CommandContext } from '../cli.js';

export type RegisterCommands = (program: Command, ctx: CommandContext) => void;

export const COMMAND_MODULES: RegisterCommands[] = [];
import { register as registerAgent } from './agent.js'; COMMAND_MODULES.push(registerAgent);
import { register as registerSsh } from './ssh.js'; COMMAND_MODULES.push(registerSsh);
import { register as registerReload } from './reload.js'; COMMAND_MODULES.push(registerReload);
import { register as registerSetup } from './setup.js'; COMMAND_MODULES.push(registerSetup);
import { register as registerHealth } from './health.js'; COMMAND_MODULES.push(registerHealth);
import { register as registerAddPc } from './addpc.js'; COMMAND_MODULES.push(registerAddPc);
