/**
 * A device bot's Matrix credentials: MESHPILOT_HOME/keys/<device>/matrix.json (0600).
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';

export const MatrixCredentialsSchema = z.object({
  userId: z.string().regex(/^@[^:\s]+:\S+$/),
  accessToken: z.string().min(1).max(4096),
  deviceId: z.string().max(256).optional(),
  homeserverUrl: z.string().max(512).optional(),
  /** The account password when meshpilot knows it: lets the bot replace a device whose keys were lost. */
  password: z.string().min(1).max(512).optional(),
}).strict();
export type MatrixCredentials = z.infer<typeof MatrixCredentialsSchema>;

export function credentialsFile(keysDir: string, name: string): string {
  return path.join(keysDir, name, 'matrix.json');
}

export function readCredentials(keysDir: string, name: string): MatrixCredentials | undefined {
  const file = credentialsFile(keysDir, name);
  if (!existsSync(file)) return undefined;
  const parsed = MatrixCredentialsSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
  return parsed.success ? parsed.data : undefined;
}

/** The bot account's password: from matrix.json, or the matrix.password file add-pc keeps. */
export function readBotPassword(keysDir: string, name: string): string | undefined {
  const fromCreds = readCredentials(keysDir, name)?.password;
  if (fromCreds) return fromCreds;
  const file = path.join(keysDir, name, 'matrix.password');
  return existsSync(file) ? readFileSync(file, 'utf8').trim() || undefined : undefined;
}

export function writeCredentials(keysDir: string, name: string, creds: MatrixCredentials): void {
  const file = credentialsFile(keysDir, name);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(creds, null, 2), { mode: 0o600 });
  renameSync(tmp, file);
}
