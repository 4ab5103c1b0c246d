/**
 * `npm run reliability [-- section... [--store sqlite,postgres]]`: the full-size reliability runs
 * behind the figures in docs/reliability.md. Sections: hostile, crash, concurrency, memory, many,
 * flood (default: all). `--store` picks the crash section's backends (default `sqlite`; each is
 * recorded as its own entry, `crash` and `crash-postgres`); `postgres` uses the server named by
 * MCN_TEST_POSTGRES (`bash scripts/postgres.sh run npm run reliability -- crash --store postgres`)
 * or starts a throwaway one. Prints each section's figures as JSON lines (prefixed `figures`) and records them in
 * bench/results/reliability.json (sections not run keep their last figures). Run the memory and
 * many-machine sections in a process of their own (`npm run reliability -- memory`) for RSS
 * figures that no earlier section inflated. The vitest suite (test/reliability) runs reduced
 * sizes of the same code and asserts behaviour; this script measures.
 *
 * Needs `node --expose-gc` (the npm script passes it). Sizes can be overridden with
 * MCN_RELIABILITY_SCALE (a factor, e.g. 0.1 for a quick look).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runConcurrency } from '../test/reliability/concurrency';
import { startPostgres } from '../test/helpers/postgres';
import { runCrashSafety } from '../test/reliability/crash';
import { runFlood } from '../test/reliability/flood';
import { runHostileInput } from '../test/reliability/hostile';
import { runManyMachines } from '../test/reliability/many-machines';
import { runEncryptDecryptSoak, runFinalizers, runOpenCloseCycles, runShareSoak } from '../test/reliability/memory';

const scale = Number(process.env.MCN_RELIABILITY_SCALE ?? 1);
const size = (n: number, min = 1) => Math.max(min, Math.round(n * scale));

/** The crash section on PostgreSQL: MCN_TEST_POSTGRES's server, or a throwaway one. */
async function crashOnPostgres(): Promise<Record<string, unknown>> {
  const started = process.env.MCN_TEST_POSTGRES === undefined ? startPostgres() : undefined;
  const url = process.env.MCN_TEST_POSTGRES ?? started?.url;
  if (url === undefined) throw new Error('crash --store postgres: set MCN_TEST_POSTGRES or install PostgreSQL (scripts/install-postgres.sh)');
  try {
    return { sigkill: await runCrashSafety(size(50, 2), { backend: { kind: 'postgres', url } }) };
  } finally {
    started?.stop();
  }
}

const sections: Record<string, () => Promise<Record<string, unknown>>> = {
  hostile: async () => ({ fastCheck: await runHostileInput(size(10_000)) }),
  crash: async () => ({ sigkill: await runCrashSafety(size(50, 2)) }),
  'crash-postgres': crashOnPostgres,
  concurrency: async () => ({ overlapping: await runConcurrency(size(100), size(300), 600_000) }),
  memory: async () => ({
    encryptDecrypt: await runEncryptDecryptSoak(size(100_000, 1_000), 'memory'),
    encryptDecryptSqlite: await runEncryptDecryptSoak(size(20_000, 1_000), 'sqlite'),
    shares1000: await runShareSoak(1_000, size(30, 6)),
    finalizers: await runFinalizers(size(1_000, 10)),
    openCloseCycles: await runOpenCloseCycles(size(10, 3), size(100, 10)),
  }),
  many: async () => ({ machines: await runManyMachines(size(1_000, 10)) }),
  flood: async () => ({
    keyRequests: await runFlood('key requests', size(10_000, 100)),
    roomNotices: await runFlood('room notices', size(10_000, 100)),
    noOlmNotices: await runFlood('m.no_olm notices', size(10_000, 100)),
  }),
};

(async () => {
  if (!global.gc) throw new Error('run with node --expose-gc (npm run reliability does)');
  const args = process.argv.slice(2);
  const at = args.indexOf('--store');
  const stores = at >= 0 ? (args.splice(at, 2)[1] ?? '').split(',') : ['sqlite'];
  for (const s of stores) if (s !== 'sqlite' && s !== 'postgres') throw new Error(`--store: ${JSON.stringify(s)} is not sqlite or postgres`);
  const crash = stores.map((s) => (s === 'sqlite' ? 'crash' : 'crash-postgres'));
  const wanted = (args.length ? args : Object.keys(sections).filter((n) => n !== 'crash-postgres')).flatMap((n) => (n === 'crash' ? crash : [n]));
  const file = join(process.cwd(), 'bench/results/reliability.json');
  const results: Record<string, unknown> = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : {};
  for (const name of wanted) {
    const run = sections[name];
    if (!run) throw new Error(`unknown section ${name}; one of ${Object.keys(sections).join(', ')}`);
    const start = performance.now();
    const figures = await run();
    const seconds = Math.round((performance.now() - start) / 1000);
    results[name] = { ...figures, seconds, node: process.version, scale, at: new Date().toISOString() };
    process.stdout.write(`figures ${name} ${JSON.stringify({ ...figures, seconds })}\n`);
  }
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  process.exit(0);
})().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
