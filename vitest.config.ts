import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Native addons are safest in child processes, not worker threads.
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    exclude: ['test/e2e/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
