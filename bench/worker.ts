/**
 * One implementation, one store, one size, in its own process (so peak RSS and the event loop
 * belong to it alone). Prints JSON lines: `{"phase"}` as it goes, then `{"runs","skipped"}`.
 */
import { availableParallelism } from 'node:os';
import { readFixtures } from './fixtures';
import { matrixCryptoNode, officialNode, wasmBindings, type BenchImpl, type StoreKind } from './impls';
import { summarise } from './measure';
import { PHASES, runScenario, type RepResult } from './scenario';
import type { Run } from './results';

export interface WorkerArgs {
  impl: BenchImpl['name'];
  store: StoreKind;
  n: number;
  devicesPerUser: number;
  reps: number;
  fixtures: string;
  workdir: string;
}

function pick(name: WorkerArgs['impl']): BenchImpl {
  if (name === 'matrix-crypto-node') return matrixCryptoNode;
  if (name === 'wasm') return wasmBindings;
  const official = officialNode();
  if (typeof official === 'string') throw new Error(official);
  return official;
}

const emit = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);

async function main() {
  const args = JSON.parse(process.argv[2]!) as WorkerArgs;
  const impl = pick(args.impl);
  const fixtures = readFixtures(args.fixtures);
  const devices = fixtures.devices + 1;
  const reps: RepResult[] = [];
  for (let rep = 0; rep < args.reps; rep++) {
    reps.push(await runScenario(impl, args.store, fixtures, args.workdir, (phase) => emit({ rep, phase })));
  }
  const runs: Run[] = [];
  for (const phase of PHASES) {
    const samples = reps.map((r) => r.samples[phase]).filter((s) => s !== undefined);
    if (samples.length === 0) continue;
    const wall = summarise(samples.map((s) => s.ms));
    runs.push({
      impl: impl.name,
      store: args.store,
      n: args.n,
      devicesPerUser: args.devicesPerUser,
      phase,
      wallMs: wall.median,
      usPerDevice: (wall.median * 1000) / devices,
      peakRssMb: Math.max(...samples.map((s) => s.peakRssMb)),
      toDeviceBytes: Math.max(...samples.map((s) => s.toDeviceBytes)),
      maxEventLoopDelayMs: Math.max(...samples.map((s) => s.maxEventLoopDelayMs)),
      reps: samples.length,
      minMs: wall.min,
      maxMs: wall.max,
      repMs: samples.map((s) => s.ms),
      devices,
      cores: availableParallelism(),
      rssBaseMb: Math.min(...reps.map((r) => r.baseRssMb)),
    });
  }
  emit({ runs, skipped: reps[0]?.skipped ?? {} });
}

main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
