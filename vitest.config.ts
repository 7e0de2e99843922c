import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores in CI: real processes (sshd, wireguard-go, bots) are heavier than the tests themselves.
    pool: 'forks',
    // Components log at info in production; in tests that is noise unless asked for.
    env: { MESHPILOT_LOG_LEVEL: process.env['MESHPILOT_LOG_LEVEL'] ?? 'warn' },
    maxWorkers: 2,
    // matrix-js-sdk (the "phone" in tests) logs through console regardless of the logger it is given.
    onConsoleLog: (log) => !/MatrixRTC|to-device|SyncApi|Sync no longer|Adding default global|Got room state event|\/sync error|setting pendingEvent|Stopping queue|Got remote echo|Error decrypting event|Starting queue|Queue '/.test(log),
  },
});
