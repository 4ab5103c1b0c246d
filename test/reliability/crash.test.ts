import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { runCrashSafety, type CrashBackend, type CrashFigures } from './crash';
import { postgresInstalled, startPostgres, type TestPostgres } from '../helpers/postgres';

function expectNoLoss(f: CrashFigures, kills: number) {
  expect(f.failures).toEqual([]);
  expect(f.kills).toBe(kills);
  expect(f.openFailures).toBe(0);
  expect(f.keysLost).toBe(0);
  expect(f.oneTimeKeyConflicts).toBe(0);
  expect(f.identityChanges).toBe(0);
  // The check had something to check: keys were reported, and verified after restarts.
  expect(f.keysReported).toBeGreaterThan(0);
  expect(f.decryptionsChecked).toBeGreaterThanOrEqual(f.keysReported);
  expect(f.aliceSent).toBeGreaterThan(0);
  expect(f.aliceDecryptedByBob, `bob could not decrypt: ${JSON.stringify(f.bobFailures)}\n${f.bobFailureDetails.join('\n')}`).toBe(f.aliceSent);
}

describe('crash safety on the SQLite store', () => {
  it('SIGKILL at random points: the store opens, every reported room key still decrypts, no one-time key conflicts', async () => {
    const f = await runCrashSafety(4);
    expectNoLoss(f, 4);
  }, 120_000);
});

/**
 * PostgreSQL: the server named by MCN_TEST_POSTGRES (`scripts/postgres.sh run`), else a
 * throwaway one when PostgreSQL is installed. Each restart first waits for the killed
 * holder's lease (up to 15 s), so this run is kept to 2 kills.
 */
let pg: TestPostgres | undefined;
const url = () => process.env.MCN_TEST_POSTGRES ?? pg?.url;
const available = process.env.MCN_TEST_POSTGRES !== undefined || postgresInstalled();
if (!available) {
  console.log('crash safety on PostgreSQL skipped: MCN_TEST_POSTGRES is not set and PostgreSQL is not installed (run scripts/install-postgres.sh)');
}

describe.runIf(available)('crash safety on the PostgreSQL store', () => {
  beforeAll(() => {
    if (process.env.MCN_TEST_POSTGRES === undefined) pg = startPostgres();
  });
  afterAll(() => pg?.stop());

  it('SIGKILL at random points: the account opens once the lease runs out, every reported room key still decrypts, no one-time key conflicts', async () => {
    const backend: CrashBackend = { kind: 'postgres', url: url()! };
    const f = await runCrashSafety(2, { backend });
    expectNoLoss(f, 2);
    // The restarts really met the dead holder's lease (and waited it out).
    expect(f.lockWaits).toBeGreaterThan(0);
  }, 180_000);
});
