/**
 * Runs the whole benchmark: fixtures per size, then every implementation in its own process
 * (Node workers, the Rust scenario on the crate, mautrix-go, the floor), merged into one result set.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { generateFixtures } from './fixtures';
import { officialNode, type StoreKind } from './impls';
import type { ImplName, Results, Run, Skip } from './results';
import { summarise } from './measure';
import type { WorkerArgs } from './worker';

export interface BenchOptions {
  /** Fixture sizes (recipient devices). */
  ns: number[];
  /** Devices per user, one fixture set per value. */
  devicesPerUser: number[];
  stores: StoreKind[];
  /** Repetitions per run (medians are reported). */
  reps: number;
  /** Which implementations to run; default all. */
  impls?: ImplName[];
  /** The WebAssembly peer runs once above this N, and not at all above `wasmMaxN`. */
  wasmFullRepsMaxN: number;
  wasmMaxN: number;
  /** Devices-per-user variants the WebAssembly peer runs above `wasmFullRepsMaxN`. */
  wasmLargeDevicesPerUser: number[];
  /** Also run matrix-crypto-node pinned to one CPU (SQLite, 1 device per user). */
  singleCore: boolean;
  /** Build and run the Rust side in release mode. */
  release: boolean;
  /** Print a progress bar (on a terminal) or progress lines. */
  progress: boolean;
  command: string;
}

const root = resolve(__dirname, '..');

function hostTriple(): string {
  const out = execFileSync('rustc', ['-vV'], { encoding: 'utf8' });
  return /^host: (.*)$/m.exec(out)![1]!;
}

/**
 * Build the Rust benchmark binary next to the addon's build, reusing its dependencies; or, when
 * `MCN_BENCH_RUST_BINARY` names a binary already built, use that one (no build).
 */
function buildRust(release: boolean): string {
  if (process.env.MCN_BENCH_RUST_BINARY) return process.env.MCN_BENCH_RUST_BINARY;
  const triple = hostTriple();
  const args = ['build', '-p', 'matrix-crypto-node-bench', '--ignore-rust-version', '--target', triple, ...(release ? ['--release'] : [])];
  execFileSync('cargo', args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target');
  return join(targetDir, triple, release ? 'release' : 'debug', 'matrix-crypto-node-bench');
}

/** The stores mautrix-go runs on (its crypto.MemoryStore and its SQL store on SQLite and PostgreSQL). */
export const MAUTRIX_GO_STORES: StoreKind[] = ['memory', 'sqlite', 'postgres'];

/**
 * Build the mautrix-go scenario (`bench/go`, pure-Go Olm with `-tags goolm`) into
 * `target/bench-go/`, or use the binary `MCN_BENCH_GO_BINARY` names; the reason it cannot run
 * when `go` is not on PATH. Its modules come from the Go module proxy as go.mod and go.sum pin
 * them (a build that would change either fails).
 */
export function buildGo(): { binary: string } | { skip: string } {
  if (process.env.MCN_BENCH_GO_BINARY) return { binary: process.env.MCN_BENCH_GO_BINARY };
  try {
    execFileSync('go', ['version'], { stdio: 'ignore' });
  } catch {
    return { skip: 'go is not installed (install Go 1.26 or later to include mautrix-go)' };
  }
  const binary = join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'bench-go', 'mautrix-bench');
  // No VCS stamp: the binary is a bench tool, and a git worktree's checkout can make go's stamping fail.
  execFileSync('go', ['build', '-buildvcs=false', '-tags', 'goolm', '-o', binary, '.'], { cwd: join(__dirname, 'go'), stdio: ['ignore', 'ignore', 'inherit'] });
  return { binary };
}

class Progress {
  private done = 0;
  private readonly tty = process.stderr.isTTY === true;
  constructor(private readonly total: number, private readonly enabled: boolean) {}

  show(label: string) {
    if (!this.enabled) return;
    if (!this.tty) return;
    const width = 24;
    const filled = Math.round((this.done / this.total) * width);
    const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
    process.stderr.write(`\r\x1b[K[${bar}] ${this.done}/${this.total} ${label}`);
  }

  start(label: string) {
    if (this.enabled && !this.tty) process.stderr.write(`[${this.done + 1}/${this.total}] ${label}\n`);
    this.show(label);
  }

  finish() {
    this.done++;
  }

  note(line: string) {
    if (!this.enabled) return;
    process.stderr.write(`${this.tty ? '\r\x1b[K' : ''}${line}\n`);
  }

  end() {
    if (this.enabled && this.tty) process.stderr.write('\r\x1b[K');
  }
}

/** Run a child process; `onLine` sees each stdout line; resolves with the last JSON line. */
function child(command: string, args: string[], onLine: (line: string) => void): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const p = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let buffered = '';
    let last = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim()) {
          last = line;
          onLine(line);
        }
      }
    });
    p.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      const lines = chunk.trim().split('\n');
      onLine(JSON.stringify({ note: lines[lines.length - 1] }));
    });
    p.on('error', reject);
    p.on('close', (code) => {
      if (buffered.trim()) last = buffered.trim();
      if (code === 0) resolvePromise(last);
      else reject(new Error(`${command} ${args.slice(0, 4).join(' ')} exited with ${code}:\n${stderr.slice(-4000)}`));
    });
  });
}

export async function runBench(options: BenchOptions): Promise<Results> {
  const wanted = (impl: ImplName) => !options.impls || options.impls.includes(impl);
  const official = officialNode();
  const skipped: Skip[] = [];
  if (typeof official === 'string' && wanted('official-node')) {
    skipped.push({ impl: 'official-node', reason: official });
  }
  const progressOf = (n: number) => (n > options.wasmMaxN ? 'skip' : n > options.wasmFullRepsMaxN ? 'once' : 'full');

  interface Job {
    label: string;
    run: (fixturesPath: string, workdir: string, onLine: (line: string) => void) => Promise<Run[]>;
  }
  const plan: { n: number; devicesPerUser: number; jobs: Job[] }[] = [];
  // Every run needs the binary: it generates the fixtures.
  const rustBinary = buildRust(options.release);
  const goBuild = wanted('mautrix-go') ? buildGo() : undefined;
  if (goBuild && 'skip' in goBuild) skipped.push({ impl: 'mautrix-go', reason: goBuild.skip });
  const goBinary = goBuild && 'binary' in goBuild ? goBuild.binary : undefined;

  const worker = (impl: WorkerArgs['impl'], store: StoreKind, n: number, devicesPerUser: number, reps: number, pin: boolean, suffix = ''): Job => ({
    label: `${impl}${pin ? ' (1 CPU)' : ''} ${store} N=${n}x${devicesPerUser}${suffix}`,
    run: async (fixtures, workdir, onLine) => {
      const args: WorkerArgs = { impl, store, n, devicesPerUser, reps, fixtures, workdir };
      const node = [process.execPath, '--expose-gc', '--import', 'tsx', join(__dirname, 'worker.ts'), JSON.stringify(args)];
      const [command, ...rest] = pin ? ['taskset', '-c', '0', ...node] : node;
      const out = JSON.parse(await child(command!, rest, onLine)) as { runs: Run[]; skipped: Record<string, string> };
      for (const [phase, reason] of Object.entries(out.skipped)) {
        skipped.push({ impl, store, n, devicesPerUser, phase: phase as Run['phase'], reason });
      }
      return out.runs;
    },
  });

  for (const n of options.ns) {
    for (const devicesPerUser of options.devicesPerUser) {
      const jobs: Job[] = [];
      if (wanted('floor')) {
        jobs.push({
          label: `floor N=${n}x${devicesPerUser}`,
          run: async (_f, _w, onLine) =>
            JSON.parse(
              await child(rustBinary, ['floor', '--devices', String(n), '--devices-per-user', String(devicesPerUser), '--reps', String(options.reps)], onLine),
            ) as Run[],
        });
      }
      // Every implementation runs in a new process per repetition, and they take turns: a slow
      // spell of the machine lands on each of them instead of on whichever ran then, and each
      // repetition's peak memory starts from a fresh process.
      const wasmMode = progressOf(n);
      if (wanted('wasm') && wasmMode === 'skip') {
        skipped.push({ impl: 'wasm', n, devicesPerUser, reason: `not run above N=${options.wasmMaxN} (its keys/query processing grows faster than linearly)` });
      } else if (wanted('wasm') && wasmMode === 'once' && !options.wasmLargeDevicesPerUser.includes(devicesPerUser)) {
        skipped.push({ impl: 'wasm', n, devicesPerUser, reason: `above N=${options.wasmFullRepsMaxN} it runs for ${options.wasmLargeDevicesPerUser.join(', ')} device(s) per user only, to keep the run short` });
      }
      for (let rep = 0; rep < options.reps; rep++) {
        const of = options.reps > 1 ? ` (rep ${rep + 1}/${options.reps})` : '';
        for (const store of options.stores) {
          if (wanted('rust-crate')) {
            jobs.push({
              label: `rust-crate ${store} N=${n}x${devicesPerUser}${of}`,
              run: async (fixtures, workdir, onLine) =>
                JSON.parse(
                  await child(
                    rustBinary,
                    ['crate', '--fixtures', fixtures, '--store', store, '--n', String(n), '--devices-per-user', String(devicesPerUser), '--reps', '1', '--workdir', workdir],
                    onLine,
                  ),
                ) as Run[],
            });
          }
          if (wanted('matrix-crypto-node')) jobs.push(worker('matrix-crypto-node', store, n, devicesPerUser, 1, false, of));
          if (wanted('official-node') && typeof official !== 'string' && official.stores.includes(store)) jobs.push(worker('official-node', store, n, devicesPerUser, 1, false, of));
          if (goBinary && MAUTRIX_GO_STORES.includes(store)) {
            jobs.push({
              label: `mautrix-go ${store} N=${n}x${devicesPerUser}${of}`,
              run: async (fixtures, workdir, onLine) =>
                JSON.parse(
                  await child(
                    goBinary,
                    ['--fixtures', fixtures, '--store', store, '--n', String(n), '--devices-per-user', String(devicesPerUser), '--reps', '1', '--workdir', workdir],
                    onLine,
                  ),
                ) as Run[],
            });
          }
        }
        if (wanted('matrix-crypto-node') && options.singleCore && devicesPerUser === 1 && options.stores.includes('sqlite')) {
          jobs.push(worker('matrix-crypto-node', 'sqlite', n, devicesPerUser, 1, true, of));
        }
        const wasmRuns = wasmMode === 'full' || (wasmMode === 'once' && options.wasmLargeDevicesPerUser.includes(devicesPerUser) && rep === 0);
        if (wanted('wasm') && wasmRuns) jobs.push(worker('wasm', 'memory', n, devicesPerUser, 1, false, wasmMode === 'full' ? of : ''));
      }
      plan.push({ n, devicesPerUser, jobs });
    }
  }

  const progress = new Progress(plan.reduce((t, p) => t + p.jobs.length, 0), options.progress);
  for (const s of skipped) progress.note(`skipped ${s.impl}${s.n ? ` N=${s.n}x${s.devicesPerUser}` : ''}: ${s.reason}`);
  const results: Results = {
    date: new Date().toISOString(),
    command: options.command,
    machine: {
      cpus: availableParallelism(),
      model: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      rustc: execFileSync('rustc', ['--version'], { encoding: 'utf8' }).trim(),
    },
    fixtures: [],
    skipped,
    runs: [],
  };
  const workdir = mkdtempSync(join(tmpdir(), 'mcn-bench-'));
  // The postgres store runs against a server of its own with PostgreSQL's default durability
  // (every commit flushed), unless MCN_BENCH_POSTGRES names one already.
  const postgresDir = options.stores.includes('postgres') && !process.env.MCN_BENCH_POSTGRES ? mkdtempSync(join(tmpdir(), 'mcn-bench-pg-')) : undefined;
  const script = join(__dirname, '..', 'scripts', 'postgres.sh');
  if (postgresDir) {
    process.env.MCN_BENCH_POSTGRES = execFileSync('bash', [script, 'start', postgresDir], { encoding: 'utf8', env: { ...process.env, MCN_POSTGRES_DURABLE: '1' } }).trim();
  }
  try {
    for (const { n, devicesPerUser, jobs } of plan) {
      progress.show(`fixtures N=${n}x${devicesPerUser}`);
      const path = join(workdir, `fixtures-${n}x${devicesPerUser}.json`);
      const fixtures = generateFixtures(rustBinary, n, devicesPerUser, path);
      results.fixtures.push({ n, devicesPerUser, devices: fixtures.devices, generationMs: fixtures.generationMs });
      progress.note(`fixtures N=${n}x${devicesPerUser}: ${fixtures.devices} devices in ${(fixtures.generationMs / 1000).toFixed(2)} s`);
      for (const job of jobs) {
        progress.start(job.label);
        const dir = join(workdir, 'stores');
        mkdirSync(dir, { recursive: true });
        const runs = await job.run(path, dir, (line) => {
          const msg = JSON.parse(line) as { phase?: string; rep?: number; note?: string };
          if (msg.phase) progress.show(`${job.label} rep ${(msg.rep ?? 0) + 1} ${msg.phase}`);
          else if (msg.note) progress.show(`${job.label} ${msg.note}`);
        });
        results.runs.push(...runs);
        progress.finish();
      }
      rmSync(path, { force: true });
    }
    results.runs = mergeRepetitions(results.runs);
    // Each repetition's process reports the same skipped phases.
    const seen = new Set<string>();
    results.skipped = results.skipped.filter((s) => {
      const key = JSON.stringify(s);
      return !seen.has(key) && (seen.add(key), true);
    });
  } finally {
    progress.end();
    rmSync(workdir, { recursive: true, force: true });
    if (postgresDir) {
      execFileSync('bash', [script, 'stop', postgresDir], { stdio: 'inherit' });
      delete process.env.MCN_BENCH_POSTGRES;
    }
  }
  return results;
}

/**
 * Combine the runs of one implementation, store, size, phase and core count that came from
 * separate processes (one per repetition) into one: the median of their wall times, the extremes
 * of their spreads, the highest peaks and the lowest base.
 */
export function mergeRepetitions(runs: Run[]): Run[] {
  const groups = new Map<string, Run[]>();
  for (const r of runs) {
    const key = [r.impl, r.store, r.n, r.devicesPerUser, r.phase, r.cores].join('|');
    const group = groups.get(key);
    if (group) group.push(r);
    else groups.set(key, [r]);
  }
  return [...groups.values()].map((group) => {
    if (group.length === 1) return group[0]!;
    const wall = summarise(group.map((r) => r.wallMs));
    const first = group[0]!;
    const delays = group.map((r) => r.maxEventLoopDelayMs).filter((d): d is number => d !== null);
    return {
      ...first,
      wallMs: wall.median,
      usPerDevice: (wall.median * 1000) / first.devices,
      peakRssMb: Math.max(...group.map((r) => r.peakRssMb)),
      toDeviceBytes: Math.max(...group.map((r) => r.toDeviceBytes)),
      maxEventLoopDelayMs: delays.length ? Math.max(...delays) : null,
      reps: group.reduce((t, r) => t + r.reps, 0),
      minMs: Math.min(...group.map((r) => r.minMs)),
      maxMs: Math.max(...group.map((r) => r.maxMs)),
      repMs: group.flatMap((r) => r.repMs ?? [r.wallMs]),
      rssBaseMb: Math.min(...group.map((r) => r.rssBaseMb)),
    };
  });
}
