import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { runMessageLoop, type MessageLoopFigures } from './megolm-index';
import { postgresInstalled, startPostgres, type TestPostgres } from '../helpers/postgres';

function expectNoReuse(f: MessageLoopFigures, kills: number, closes: number) {
  expect(f.failures).toEqual([]);
  expect(f.kills).toBe(kills);
  expect(f.cleanCloses).toBe(closes);
  expect(f.reusedIndices).toEqual([]);
  expect(f.decryptFailures).toEqual([]);
  expect(f.decrypted).toBe(f.sent);
  expect(f.rotationsAfterCleanClose).toBe(0);
  // The check had something to check: messages in every life, more than one room key.
  expect(f.sent).toBeGreaterThan(5 * (kills + closes));
  expect(f.sessions).toBeGreaterThan(1);
}

describe('Megolm indices across SIGKILLs on the SQLite store', () => {
  it('kills at random points of a message loop: no (session, index) pair twice, every message decrypts, a clean close keeps the room key', async () => {
    const lives = ['kill', 'kill', 'close', 'kill', 'kill', 'close', 'kill'] as const;
    const f = await runMessageLoop([...lives]);
    expectNoReuse(f, 5, 3);
  }, 180_000);
});

/**
 * PostgreSQL: the server named by MCN_TEST_POSTGRES, else a throwaway one when PostgreSQL is
 * installed. Each restart after a kill waits for the killed holder's lease, so fewer lives.
 */
let pg: TestPostgres | undefined;
const available = process.env.MCN_TEST_POSTGRES !== undefined || postgresInstalled();
if (!available) {
  console.log('Megolm indices on PostgreSQL skipped: MCN_TEST_POSTGRES is not set and PostgreSQL is not installed (run scripts/install-postgres.sh)');
}

describe.runIf(available)('Megolm indices across SIGKILLs on the PostgreSQL store', () => {
  beforeAll(() => {
    if (process.env.MCN_TEST_POSTGRES === undefined) pg = startPostgres();
  });
  afterAll(() => pg?.stop());

  it('kills at random points of a message loop: no (session, index) pair twice, every message decrypts', async () => {
    const url = process.env.MCN_TEST_POSTGRES ?? pg!.url;
    const f = await runMessageLoop(['kill', 'close', 'kill'], { backend: { kind: 'postgres', url } });
    expectNoReuse(f, 2, 2);
  }, 180_000);
});
