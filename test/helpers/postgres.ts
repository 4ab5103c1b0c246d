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
  /** The unix socket's connection string; with TLS, the TCP one (`host=localhost port=…`). */
  url: string;
  dir: string;
  /** With TLS: the TCP port, and the folder of ca.crt, other-ca.crt, client.crt, client.key. */
  tls?: { port: number; files: string };
  stop(): void;
}

/**
 * Start a server, or say why there is none. `tls`: it also listens on loopback TCP with TLS, its
 * certificate signed by a test CA (`scripts/postgres.sh start DIR tls`).
 */
export function startPostgres(mode?: 'tls'): TestPostgres | undefined {
  if (!postgresInstalled()) {
    console.log('PostgreSQL store tests skipped: PostgreSQL is not installed (run scripts/install-postgres.sh)');
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'mcn-pg-'));
  const url = execFileSync('bash', [SCRIPT, 'start', dir, ...(mode === undefined ? [] : [mode])], { encoding: 'utf8' }).trim();
  const stop = () => execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'inherit' });
  if (mode === undefined) return { url, dir, stop };
  const port = Number(/port=(\d+)/.exec(url)?.[1]);
  return { url, dir, tls: { port, files: join(dir, 'tls') }, stop };
}
