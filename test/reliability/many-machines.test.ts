import { describe, it, expect } from 'vitest';
import { runManyMachines } from './many-machines';

describe('many machines in one process', () => {
  it('48 SQLite machines open at once each share and decrypt, on a bounded number of threads', async () => {
    const f = await runManyMachines(48);
    expect(f.failures).toEqual([]);
    expect(f.decrypted).toBe(48);
    // One shared runtime: at most its blocking threads (2 x cores, 4 to 32: native/src/runtime.rs) and a few
    // workers on top of Node's own, however many machines are open; a thread per machine
    // would add at least 48.
    expect(f.threadsPeak - f.threadsBefore).toBeLessThanOrEqual(40);
  });
});
