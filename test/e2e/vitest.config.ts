// Vitest config for the end-to-end tests against a real Synapse (see test/e2e/synapse.ts).
// Run: npm run test:e2e (scripts/test-e2e.sh: installs Synapse if needed, runs vitest under Node 24).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    pool: 'forks',
    include: ['test/e2e/**/*.e2e.test.ts'],
    // Each file starts its own Synapse (~4 s, one CPU): keep the two cores from thrashing.
    maxWorkers: 2,
    testTimeout: 60_000,
    // matrix-js-sdk logs every request to the console: show console output of failed tests only.
    silent: 'passed-only',
    hookTimeout: 120_000,
  },
});
