/**
 * The store engine's targets (issue 15) from a results file of `bench/run.ts`: for one N (one
 * device per user), each phase of ours on `sqlite` (our engine) and `postgres` against ours on
 * `memory` (the crate's memory store, same binding), against ours on `sqlite-crate` (the crate's
 * matrix-sdk-sqlite) and against the official Node bindings on their SQLite store, as medians
 * of the ratios of paired repetitions (repetition i of each ran next to the others), with the
 * min–max of those ratios. Prints a markdown table.
 *
 *   npx tsx bench/store-targets.ts [results.json] [N]
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PhaseName, Results, Run } from './results';

const PHASES: PhaseName[] = ['keys_query', 'olm_sessions', 'share_new', 'share_existing', 'share_withheld', 'encrypt_decrypt'];

/** Median and min–max of `a ÷ b` over paired repetitions (ratio of medians without them). */
export function paired(a: Run | undefined, b: Run | undefined): { median: number; min: number; max: number } | undefined {
  if (!a || !b) return undefined;
  const x = a.repMs ?? [a.wallMs];
  const y = b.repMs ?? [b.wallMs];
  const ratios = x.length === y.length ? x.map((v, i) => v / y[i]!) : [a.wallMs / b.wallMs];
  const sorted = [...ratios].sort((p, q) => p - q);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

/** Growth of resident memory per recipient device over the whole run of one store, in KB. */
export function rssPerDeviceKb(runs: Run[]): number | undefined {
  if (runs.length === 0) return undefined;
  const peak = Math.max(...runs.map((r) => r.peakRssMb));
  return ((peak - runs[0]!.rssBaseMb) * 1024) / runs[0]!.devices;
}

function main() {
  const file = process.argv[2] ?? join(__dirname, 'results', 'latest.json');
  const results = JSON.parse(readFileSync(file, 'utf8')) as Results;
  const n = Number(process.argv[3] ?? 10_000);
  const cores = results.machine.cpus;
  const run = (impl: Run['impl'], store: string, phase: PhaseName) =>
    results.runs.find((r) => r.impl === impl && r.store === store && r.n === n && r.devicesPerUser === 1 && r.phase === phase && r.cores === cores);
  const fmt = (v: ReturnType<typeof paired>) => (v ? `${v.median.toFixed(2)}x (${v.min.toFixed(2)}–${v.max.toFixed(2)})` : '–');
  const ms = (r: Run | undefined) => (r ? `${r.wallMs.toFixed(1)} ms (${r.minMs.toFixed(1)}–${r.maxMs.toFixed(1)})` : '–');
  const stores = ['memory', 'sqlite', 'sqlite-crate', 'postgres'];
  console.log(`N = ${n}, one device per user; ${results.date}; ${results.command}\n`);
  console.log('| phase | ' + stores.map((s) => `ours ${s}`).join(' | ') + ' | official-node sqlite |');
  console.log('| --- |' + ' ---: |'.repeat(stores.length + 1));
  for (const p of PHASES) {
    console.log(`| ${p} | ${stores.map((s) => ms(run('matrix-crypto-node', s, p))).join(' | ')} | ${ms(run('official-node', 'sqlite', p))} |`);
  }
  console.log('\nPaired ratios, median (min–max):\n');
  console.log('| phase | sqlite ÷ memory | postgres ÷ memory | sqlite-crate ÷ sqlite (speed-up) | sqlite ÷ official-node sqlite | ours memory ÷ rust-crate memory |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const p of PHASES) {
    const ours = (s: string) => run('matrix-crypto-node', s, p);
    console.log(
      `| ${p} | ${fmt(paired(ours('sqlite'), ours('memory')))} | ${fmt(paired(ours('postgres'), ours('memory')))} | ${fmt(paired(ours('sqlite-crate'), ours('sqlite')))} | ${fmt(paired(ours('sqlite'), run('official-node', 'sqlite', p)))} | ${fmt(paired(ours('memory'), run('rust-crate', 'memory', p)))} |`,
    );
  }
  console.log('\nPeak RSS growth per device (KB, whole run of one store):\n');
  for (const s of stores) {
    const kb = rssPerDeviceKb(results.runs.filter((r) => r.impl === 'matrix-crypto-node' && r.store === s && r.n === n && r.devicesPerUser === 1 && r.cores === cores));
    console.log(`- ours ${s}: ${kb === undefined ? '–' : kb.toFixed(1)}`);
  }
  const off = rssPerDeviceKb(results.runs.filter((r) => r.impl === 'official-node' && r.store === 'sqlite' && r.n === n && r.devicesPerUser === 1));
  console.log(`- official-node sqlite: ${off === undefined ? '–' : off.toFixed(1)}`);
}

if (require.main === module) main();
