/** matrix-bot-sdk's global LogService, routed into pino. */
import { LogLevel, LogService, type ILogger } from 'matrix-bot-sdk';
import type { Logger } from 'pino';
import { errInfo } from './errors.js';

let sdkLog: Logger | undefined;

/** Routes matrix-bot-sdk's global LogService into pino: one line per call, no stacks, failed requests at debug. */
export function installSdkLogger(log: Logger): void {
  sdkLog = log.child({ component: 'matrix-bot-sdk' });
  const fmt = (parts: unknown[]): string =>
    parts
      .map((p) => (typeof p === 'string' ? p : p instanceof Error || (p && typeof p === 'object') ? errInfo(p).message : String(p)))
      .join(' ')
      .slice(0, 500);
  const adapter: ILogger = {
    trace: () => {},
    debug: (mod: string, ...m: unknown[]) => sdkLog?.debug({ module: mod }, fmt(m)),
    info: (mod: string, ...m: unknown[]) => sdkLog?.debug({ module: mod }, fmt(m)),
    warn: (mod: string, ...m: unknown[]) => sdkLog?.warn({ module: mod }, fmt(m)),
    // the HTTP layer logs every failed request; the caller gets the error as a value, so keep these at debug
    error: (mod: string, ...m: unknown[]) =>
      mod === 'MatrixHttpClient' ? sdkLog?.debug({ module: mod }, fmt(m)) : sdkLog?.warn({ module: mod }, fmt(m)),
  };
  LogService.setLogger(adapter);
  LogService.setLevel(log.isLevelEnabled('debug') ? LogLevel.DEBUG : LogLevel.WARN);
}
