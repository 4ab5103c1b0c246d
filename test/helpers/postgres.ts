/**
 * A throwaway PostgreSQL server for a test file (scripts/postgres.sh): started in `beforeAll`,
 * stopped in `afterAll`. Without PostgreSQL installed, `start()` resolves to `undefined` and
 * prints why, and the caller skips its PostgreSQL tests.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SCRIPT = join(__dirname, '..', '..', 'scripts', 'postgres.sh');

/** Whether initdb is installed where scripts/postgres.sh looks for it. */
export function postgresInstalled(): boolean {
  const root = '/usr/lib/postgresql';
  if (existsSync(root) && readdirSync(root).some((v) => existsSync(join(root, v, 'bin', 'initdb')))) return true;
  try {
    execFileSync('sh', ['-c', 'command -v initdb'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A running server: its libpq connection string and socket folder. */
export interface TestPostgres {
  url: string;
  dir: string;
  stop(): void;
}

/** Start a server, or say why there is none. */
export function startPostgres(): TestPostgres | undefined {
  if (!postgresInstalled()) {
    console.log('PostgreSQL store tests skipped: PostgreSQL is not installed (run scripts/install-postgres.sh)');
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'mcn-pg-'));
  const url = execFileSync('bash', [SCRIPT, 'start', dir], { encoding: 'utf8' }).trim();
  return { url, dir, stop: () => execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'inherit' }) };
}
