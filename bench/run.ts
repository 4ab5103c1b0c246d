/**
 * `npm run bench`: mass-recipient sharing against the peers and the floor. Writes
 * bench/results/latest.{json,md,svg}.
 *
 *   npx tsx bench/run.ts [--n 100,1000,10000] [--devices-per-user 1,3] [--stores memory,sqlite]
 *                        [--reps 3] [--impls matrix-crypto-node,wasm,...] [--out bench/results]
 *                        [--wasm-max-n 10000] [--wasm-full-reps-max-n 1000] [--no-single-core] [--debug]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { runBench } from './driver';
import { markdown, svg } from './report';
import type { ImplName } from './results';
import type { StoreKind } from './impls';

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const list = (name: string, fallback: string) => (option(name) ?? fallback).split(',').map((s) => s.trim());
const numbers = (name: string, fallback: string) => list(name, fallback).map(Number);

async function main() {
  const out = resolve(option('--out') ?? join(__dirname, 'results'));
  const results = await runBench({
    ns: numbers('--n', '100,1000,10000'),
    devicesPerUser: numbers('--devices-per-user', '1,3'),
    stores: list('--stores', 'memory,sqlite') as StoreKind[],
    reps: Number(option('--reps') ?? 3),
    impls: option('--impls') ? (list('--impls', '') as ImplName[]) : undefined,
    wasmMaxN: Number(option('--wasm-max-n') ?? 10_000),
    wasmFullRepsMaxN: Number(option('--wasm-full-reps-max-n') ?? 1_000),
    wasmLargeDevicesPerUser: numbers('--wasm-large-devices-per-user', '1'),
    singleCore: !process.argv.includes('--no-single-core'),
    release: !process.argv.includes('--debug'),
    progress: true,
    command: process.env.BENCH_COMMAND ?? `npx tsx bench/run.ts ${process.argv.slice(2).join(' ')}`.trim(),
  });
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'latest.json'), `${JSON.stringify(results, null, 2)}\n`);
  const report = markdown(results);
  writeFileSync(join(out, 'latest.md'), report);
  writeFileSync(join(out, 'latest.svg'), svg(results));
  process.stdout.write(`${report}\nwrote ${join(out, 'latest.json')}, latest.md, latest.svg\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`\n${err.stack ?? err}\n`);
  process.exit(1);
});
