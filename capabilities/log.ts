/**
 * One pino logger for the whole process, with a child per component (and per device).
 * Logs go to stderr so command output on stdout stays machine-readable.
 * Redaction covers tokens, keys and secrets wherever they appear in a logged object.
 */
import { pino, type Logger } from 'pino';

export const REDACT_PATHS = [
  'token', '*.token', 'accessToken', '*.accessToken', 'access_token', '*.access_token',
  'password', '*.password', 'secret', '*.secret', 'sharedSecret', '*.sharedSecret',
  'registration_shared_secret', '*.registration_shared_secret',
  'privateKey', '*.privateKey', 'private_key', '*.private_key', 'presharedKey', '*.presharedKey',
  'apiKey', '*.apiKey', 'api_key', '*.api_key', 'hmacSecret', '*.hmacSecret',
  'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization',
  'wgDump', '*.wgDump',
];

let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino(
    {
      name: 'meshpilot',
      level: process.env['MESHPILOT_LOG_LEVEL'] ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    pino.destination({ fd: 2, sync: true }),
  );
  return root;
}

export function logger(component: string, bindings: Record<string, string> = {}): Logger {
  return rootLogger().child({ component, ...bindings });
}

/** For tests and embedders: log into a given destination instead of stderr. */
export function setRootLogger(l: Logger): void {
  root = l;
}
