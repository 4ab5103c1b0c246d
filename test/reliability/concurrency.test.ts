import { describe, it, expect } from 'vitest';
import { runConcurrency } from './concurrency';

describe('overlapping calls on one machine', () => {
  it('shares in many rooms, decryptions, syncs and request rounds at once: all settle, results consistent', async () => {
    const f = await runConcurrency(12, 24, 50_000);
    expect(f.deadlock).toBe(false);
    expect(f.failures).toEqual([]);
    expect(f.failedCalls).toBe(0);
    expect(f.inconsistent).toBe(0);
    expect(f.decryptions).toBe(24);
    expect(f.callsInFlight).toBe(12 + 24 + 4 + 4);
  }, 120_000);
});
