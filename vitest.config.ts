import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores in CI: real processes (sshd, wireguard-go, bots) are heavier than the tests themselves.
    pool: 'forks',
    maxWorkers: 2,
  },
});
