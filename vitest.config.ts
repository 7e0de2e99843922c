import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores in CI: real processes (sshd, wireguard-go, bots) are heavier than the tests themselves.
    pool: 'forks',
    maxWorkers: 2,
    // matrix-js-sdk (the "phone" in tests) logs through console regardless of the logger it is given.
    onConsoleLog: (log) => !/MatrixRTC|to-device|SyncApi|Sync no longer|Adding default global|Got room state event/.test(log),
  },
});
