/**
 * The benchmark runs each compared implementation once per repetition, in turns; the driver then
 * merges those processes' runs into one run per implementation, store, size and phase.
 */
import { describe, expect, it } from 'vitest';
import { mergeRepetitions } from '../bench/driver';
import { pairedRatio } from '../bench/report';
import type { Run } from '../bench/results';

const run = (over: Partial<Run>): Run => ({
  impl: 'matrix-crypto-node',
  store: 'sqlite',
  n: 100,
  devicesPerUser: 1,
  phase: 'share_new',
  wallMs: 10,
  usPerDevice: (10 * 1000) / 101,
  peakRssMb: 100,
  toDeviceBytes: 5000,
  maxEventLoopDelayMs: 2,
  reps: 1,
  minMs: 10,
  maxMs: 10,
  devices: 101,
  cores: 2,
  rssBaseMb: 50,
  ...over,
});

describe('mergeRepetitions', () => {
  it('takes the median wall time, the extremes of the spread, the highest peaks and the lowest base', () => {
    const merged = mergeRepetitions([
      run({ wallMs: 30, minMs: 30, maxMs: 30, peakRssMb: 120, maxEventLoopDelayMs: 4, rssBaseMb: 52 }),
      run({ wallMs: 10, minMs: 10, maxMs: 10, peakRssMb: 110, maxEventLoopDelayMs: 9, rssBaseMb: 48 }),
      run({ wallMs: 20, minMs: 20, maxMs: 20, peakRssMb: 100, maxEventLoopDelayMs: 1, rssBaseMb: 50 }),
    ]);
    expect(merged).toHaveLength(1);
    const m = merged[0]!;
    expect(m.wallMs).toBe(20);
    expect(m.usPerDevice).toBeCloseTo((20 * 1000) / 101);
    expect([m.minMs, m.maxMs]).toEqual([10, 30]);
    expect(m.reps).toBe(3);
    expect(m.peakRssMb).toBe(120);
    expect(m.maxEventLoopDelayMs).toBe(9);
    expect(m.rssBaseMb).toBe(48);
  });

  it('keeps implementations, stores, phases and core counts apart', () => {
    const merged = mergeRepetitions([
      run({}),
      run({ impl: 'rust-crate', maxEventLoopDelayMs: null }),
      run({ impl: 'rust-crate', maxEventLoopDelayMs: null, wallMs: 14 }),
      run({ store: 'memory' }),
      run({ phase: 'share_existing' }),
      run({ cores: 1 }),
    ]);
    expect(merged).toHaveLength(5);
    const rust = merged.find((r) => r.impl === 'rust-crate')!;
    expect(rust.reps).toBe(2);
    expect(rust.wallMs).toBe(12);
    expect(rust.maxEventLoopDelayMs).toBeNull();
  });
});

describe('paired ratios', () => {
  it('keeps each repetition in the order it ran when merging', () => {
    const merged = mergeRepetitions([run({ wallMs: 30, repMs: [30] }), run({ wallMs: 10, repMs: [10] }), run({ wallMs: 20 })]);
    expect(merged[0]!.repMs).toEqual([30, 10, 20]);
  });

  it('divides repetition by repetition and takes the median, so a slow spell shared by both cancels', () => {
    // The machine was slow in the second repetition for both implementations.
    const ours = run({ wallMs: 22, repMs: [11, 44, 22] });
    const crate = run({ impl: 'rust-crate', wallMs: 20, repMs: [10, 40, 20], maxEventLoopDelayMs: null });
    expect(pairedRatio(ours, crate)).toBeCloseTo(1.1);
    // A slow spell over two of ours and one of the crate's: the medians come from different
    // conditions (30 against 12, 2.5x), the pairs mostly from the same (1.11x, 1.11x, 2.58x).
    const ours2 = run({ wallMs: 30, repMs: [10, 30, 31] });
    const crate2 = run({ impl: 'rust-crate', wallMs: 12, repMs: [9, 27, 12] });
    expect(ours2.wallMs / crate2.wallMs).toBeCloseTo(2.5);
    expect(pairedRatio(ours2, crate2)).toBeCloseTo(30 / 27);
  });

  it('falls back to the ratio of the medians without matching repetitions', () => {
    expect(pairedRatio(run({ wallMs: 30 }), run({ wallMs: 20 }))).toBeCloseTo(1.5);
    expect(pairedRatio(run({ wallMs: 30, repMs: [30, 30] }), run({ wallMs: 20, repMs: [20] }))).toBeCloseTo(1.5);
    expect(pairedRatio(undefined, run({}))).toBeUndefined();
  });
});
