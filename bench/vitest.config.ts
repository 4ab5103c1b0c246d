import { defineConfig } from 'vitest/config';

// `npm run test:bench`: the benchmark at a tiny size (bench/smoke.test.ts). Kept out of the unit
// suite because it builds the benchmark's Rust binary (bench/rust) and runs every implementation
// in processes of their own; `npm test` runs it once, not under every Node version.
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['bench/**/*.test.ts'],
    testTimeout: 600_000,
    hookTimeout: 120_000,
  },
});
