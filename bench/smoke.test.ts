/**
 * The benchmark at a tiny size: every implementation that can run here produces every figure.
 * No timing is asserted (benchmarks are not tests).
 */
import { describe, expect, it } from 'vitest';
import { buildGo, runBench } from './driver';
import { markdown, svg, targets } from './report';
import type { ImplName, PhaseName, Results } from './results';

const PHASES: PhaseName[] = ['keys_query', 'olm_sessions', 'share_new', 'share_existing', 'encrypt_decrypt', 'share_withheld'];
const SHARES: PhaseName[] = ['share_new', 'share_existing', 'share_withheld'];

describe('npm run bench, smoke size', () => {
  let results: Results;

  it('runs every implementation through every phase', { timeout: 600_000 }, async () => {
    results = await runBench({
      // mautrix-go is not in the smoke run: building it compiles SQLite through cgo, more than a
      // minute of CI on a cold cache. `npm run bench` includes it when go is installed.
      impls: ['matrix-crypto-node', 'rust-crate', 'wasm', 'official-node', 'floor'],
      ns: [20],
      devicesPerUser: [1],
      stores: ['memory', 'sqlite'],
      reps: 1,
      wasmMaxN: 20,
      wasmFullRepsMaxN: 20,
      wasmLargeDevicesPerUser: [1],
      singleCore: false,
      release: false,
      progress: false,
      command: 'bench/smoke.test.ts',
    });
    const expected: [ImplName, string][] = [
      ['matrix-crypto-node', 'memory'],
      ['matrix-crypto-node', 'sqlite'],
      ['rust-crate', 'memory'],
      ['rust-crate', 'sqlite'],
      ['wasm', 'memory'],
      ['floor', 'none'],
    ];
    for (const [impl, store] of expected) {
      for (const phase of PHASES) {
        const run = results.runs.find((r) => r.impl === impl && r.store === store && r.phase === phase);
        expect(run, `${impl} ${store} ${phase}`).toBeDefined();
        const r = run!;
        expect(r.n).toBe(20);
        expect(r.devices).toBe(21);
        for (const figure of [r.wallMs, r.usPerDevice, r.peakRssMb, r.minMs, r.maxMs, r.rssBaseMb]) {
          expect(Number.isFinite(figure) && figure > 0, `${impl} ${store} ${phase}: ${JSON.stringify(r)}`).toBe(true);
        }
        expect(r.minMs).toBeLessThanOrEqual(r.maxMs);
        expect(r.reps).toBe(1);
        expect(r.repMs, `${impl} ${store} ${phase}: each repetition's wall time`).toHaveLength(1);
        if (impl === 'floor' || impl === 'rust-crate') {
          expect(r.maxEventLoopDelayMs).toBeNull();
        } else {
          // Produced, not how large: a phase this small may finish between two samples of the
          // event-loop monitor on a quiet machine, which records no delay at all.
          expect(Number.isFinite(r.maxEventLoopDelayMs) && r.maxEventLoopDelayMs! >= 0, JSON.stringify(r)).toBe(true);
        }
        if (SHARES.includes(phase) && impl !== 'floor') {
          expect(r.toDeviceBytes, `${impl} ${store} ${phase} sends to-device messages`).toBeGreaterThan(20 * 300);
        } else {
          expect(r.toDeviceBytes).toBe(0);
        }
      }
    }
    expect(results.runs.filter((r) => r.impl === 'floor').map((r) => r.cores)).toContain(1);
    expect(results.fixtures).toEqual([expect.objectContaining({ n: 20, devicesPerUser: 1, devices: 20 })]);
    const official = results.runs.some((r) => r.impl === 'official-node');
    expect(official || results.skipped.some((s) => s.impl === 'official-node')).toBe(true);
  });

  it('reports them as a table, the targets and a plot', () => {
    const md = markdown(results);
    expect(md).toContain('| keys_query | 20 |');
    expect(md).toContain('## Targets (issue #5)');
    expect(targets(results).length).toBeGreaterThanOrEqual(7);
    const plot = svg(results);
    expect(plot.startsWith('<svg')).toBe(true);
    for (const phase of PHASES) expect(plot).toContain(`>${phase}</text>`);
    expect(plot).toContain('<polyline');
  });

  it('puts mautrix-go in the tables and the plot, with the footnote on its one to-device request', () => {
    // Its runs have our runs' shape; relabelled copies exercise the report without a Go build.
    const go = results.runs.filter((r) => r.impl === 'matrix-crypto-node' && r.store !== 'postgres').map((r) => ({ ...r, impl: 'mautrix-go' as const }));
    const withGo: Results = { ...results, runs: [...results.runs, ...go] };
    const md = markdown(withGo);
    expect(md).toContain('| mautrix-go SQLite¹ | mautrix-go memory¹ |');
    expect(md).toContain('mautrix-go ÷ ours (SQLite, paired)');
    const shareBytes = go.find((r) => r.store === 'sqlite' && r.phase === 'share_new')!.toDeviceBytes;
    const note = /¹ mautrix-go sends a share's to-device messages to all N devices in one request \(here ([0-9.]+) MB at N = 20\)/.exec(md);
    expect(note, md).not.toBeNull();
    expect(Number(note![1])).toBeCloseTo(shareBytes / 1e6, 2);
    expect(md).toMatch(/\| mautrix-go¹ \| sqlite \| 20 \| 1 \| share_new \|/);
    expect(markdown(results)).not.toContain('mautrix-go');
    expect(svg(withGo)).toContain('>mautrix-go SQLite¹</text>');
  });

  it('skips mautrix-go with a reason when go is not installed', () => {
    const path = process.env.PATH;
    const binary = process.env.MCN_BENCH_GO_BINARY;
    delete process.env.MCN_BENCH_GO_BINARY;
    process.env.PATH = '/nonexistent';
    try {
      expect(buildGo()).toEqual({ skip: expect.stringContaining('go is not installed') });
    } finally {
      process.env.PATH = path;
      if (binary !== undefined) process.env.MCN_BENCH_GO_BINARY = binary;
    }
  });
});
