/**
 * Many accounts in one PostgreSQL database: open N accounts (8 at a time; each opens, uploads
 * its keys, closes), then reopen 100 of them one by one, and report the time per account and
 * the database's bytes per account. Starts its own server (scripts/postgres.sh, PostgreSQL's
 * default durability) unless MCN_BENCH_POSTGRES names one.
 *
 *   npx tsx bench/store-accounts.ts [N]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine } from '../src/index';

const script = join(__dirname, '..', 'scripts', 'postgres.sh');

async function main() {
  const n = Number(process.argv[2] ?? 1000);
  const dir = process.env.MCN_BENCH_POSTGRES ? undefined : mkdtempSync(join(tmpdir(), 'mcn-accounts-pg-'));
  const url = process.env.MCN_BENCH_POSTGRES ?? execFileSync('bash', [script, 'start', dir!], { encoding: 'utf8', env: { ...process.env, MCN_POSTGRES_DURABLE: '1' } }).trim();
  const store = { kind: 'postgres' as const, url };
  try {
    const start = Date.now();
    for (let i = 0; i < n; i += 8) {
      await Promise.all(
        Array.from({ length: Math.min(8, n - i) }, async (_, j) => {
          const m = await OlmMachine.open({ userId: `@account${i + j}:example.org`, deviceId: 'D', store });
          const upload = (await m.outgoingRequests()).find((r) => r.type === 'keys_upload')!;
          await m.markRequestAsSent(upload, { one_time_key_counts: { signed_curve25519: 50 } });
          await m.close();
        }),
      );
    }
    const createMs = Date.now() - start;
    const reopenStart = Date.now();
    const reopened = Math.min(100, n);
    for (let i = 0; i < reopened; i++) await (await OlmMachine.open({ userId: `@account${i}:example.org`, deviceId: 'D', store })).close();
    const reopenMs = (Date.now() - reopenStart) / reopened;
    const accounts = (await OlmMachine.listAccounts(store)).length;
    const query = "SELECT pg_total_relation_size('mcn_entries') + pg_total_relation_size('mcn_accounts') + pg_total_relation_size('mcn_leases')";
    const psql = ['psql', '-h', dir ?? '', '-U', 'postgres', '-tA', '-c', query];
    // As root the server runs as the postgres user (scripts/postgres.sh); so does psql then.
    const [command, ...args] = process.getuid?.() === 0 ? ['runuser', '-u', 'postgres', '--', ...psql] : psql;
    const bytes = dir ? Number(execFileSync(command!, args, { encoding: 'utf8' }).trim()) : NaN;
    console.log(JSON.stringify({ accounts, createMsPerAccount: createMs / n, reopenMsEach: reopenMs, bytesPerAccount: bytes / accounts }));
  } finally {
    if (dir) execFileSync('bash', [script, 'stop', dir], { stdio: 'inherit' });
  }
}

void main();
