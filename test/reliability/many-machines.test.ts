import { describe, it, expect } from 'vitest';
import { runManyMachines } from './many-machines';

describe('many machines in one process', () => {
  // The thread count this takes depends on the cores (native/src/runtime.rs): it is a figure of
  // `npm run reliability -- many`, not a test.
  it('48 SQLite machines open at once each share and decrypt', async () => {
    const f = await runManyMachines(48);
    expect(f.failures).toEqual([]);
    expect(f.decrypted).toBe(48);
  });
});
