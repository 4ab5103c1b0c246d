import { describe, it, expect } from 'vitest';
import { runFlood } from './flood';

describe('floods from one device produce bounded output and bounded state', () => {
  it('2,000 key requests: every one reported, at most 50 answers sent', async () => {
    const f = await runFlood('key requests', 2_000);
    expect(f.reported).toBe(2_000);
    expect(f.answersSent).toBeLessThanOrEqual(50);
  });

  it('2,000 withheld notices about 100 sessions: one record per sender and session', async () => {
    const f = await runFlood('room notices', 2_000);
    expect(f.reported).toBe(2_000);
    expect(f.recordsKept).toBe(100);
    expect(f.answersSent).toBe(0);
  });

  it('2,000 m.no_olm notices with made-up keys: the records kept stay capped', async () => {
    const f = await runFlood('m.no_olm notices', 2_000);
    expect(f.reported).toBe(2_000);
    expect(f.recordsKept).toBe(64);
    expect(f.answersSent).toBe(0);
  });
});
