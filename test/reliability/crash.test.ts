import { describe, it, expect } from 'vitest';
import { runCrashSafety } from './crash';

describe('crash safety on the SQLite store', () => {
  it('SIGKILL at random points: the store opens, every reported room key still decrypts, no one-time key conflicts', async () => {
    const f = await runCrashSafety(4);
    expect(f.failures).toEqual([]);
    expect(f.kills).toBe(4);
    expect(f.openFailures).toBe(0);
    expect(f.keysLost).toBe(0);
    expect(f.oneTimeKeyConflicts).toBe(0);
    expect(f.identityChanges).toBe(0);
    // The check had something to check: keys were reported, and verified after restarts.
    expect(f.keysReported).toBeGreaterThan(0);
    expect(f.decryptionsChecked).toBeGreaterThanOrEqual(f.keysReported);
    expect(f.aliceDecryptedByBob, `bob could not decrypt: ${JSON.stringify(f.bobFailures)}\n${f.bobFailureDetails.join('\n')}`).toBe(f.aliceSent);
  }, 120_000);
});
