// The appservice's state in the store engine: one database for the state and every device's
// keys (SQLite in the store root, or PostgreSQL), the migration of a store root written by the
// previous layout (test/helpers/legacy-appservice-root.ts writes one with that release's code),
// deleteDevice through the store, state across reopen, the redelivery mark, and two managers on
// one PostgreSQL database (one serves, the other waits for the lease).
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openAppserviceStore } from '../native/index';
import { AppserviceCrypto, OlmMachine, serveAppservice, type AppserviceCryptoOptions } from '../src/index';
import { TestDevice } from '../src/testing';
import { FakeAppserviceHomeserver, HS_TOKEN, registration } from './appservice-fake';
import { writeLegacyRoot } from './helpers/legacy-appservice-root';
import { startPostgres, type TestPostgres } from './helpers/postgres';

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const ALICE = '@alice:example.org';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);

async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'mcn-as-state-'));
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  return root;
}

function opener(root: string, fake: FakeAppserviceHomeserver, base: Partial<AppserviceCryptoOptions> = {}) {
  return async (extra: Partial<AppserviceCryptoOptions> = {}): Promise<AppserviceCrypto> => {
    const c = await AppserviceCrypto.open({
      homeserverUrl: 'http://hs.invalid',
      registration,
      storeRoot: root,
      transport: { fetch: fake.fetch, maxRetries: 0 },
      // The state is what these tests are about: keys come through transactions, not a background drain.
      inboxDrain: false,
      ...base,
      ...extra,
    });
    cleanup.push(() => c.close());
    return c;
  };
}

function member(userId: string) {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}`, content: { membership: 'join' } };
}

describe('migration of a store root of the previous layout', () => {
  for (const passphrase of [undefined, 'legacy secret']) {
    it(`moves every device's keys and the journal into one database${passphrase ? ' (encrypted)' : ''}`, async () => {
      const root = await tempRoot();
      const legacy = await writeLegacyRoot(root, [A, B], passphrase);
      const fake = new FakeAppserviceHomeserver();
      for (const d of legacy.devices) fake.devices.set(d.userId, new Set([d.deviceId]));
      // An interrupted earlier migration left a different account for A in the database: the
      // migration copies A's account again, over it.
      const stale = await OlmMachine.open({ userId: A, deviceId: legacy.devices[0]!.deviceId, store: { kind: 'sqlite', path: root, ...(passphrase ? { passphrase } : {}) } });
      expect(stale.identityKeys.curve25519).not.toBe(legacy.devices[0]!.curve25519);
      await stale.close();

      const open = opener(root, fake, passphrase ? { storePassphrase: passphrase } : {});
      const crypto = await open();
      expect(crypto.devices).toEqual(legacy.devices.map(({ userId, deviceId }) => ({ userId, deviceId })));
      for (const d of legacy.devices) {
        expect(await crypto.withMachine(d.userId, async (m) => m.identityKeys.curve25519)).toBe(d.curve25519);
      }
      expect(await crypto.decryptRoomEvent(A, legacy.roomId, legacy.encrypted)).toMatchObject({
        kind: 'decrypted',
        decrypted: { event: { content: { body: 'kept across the migration' } } },
      });
      expect((await crypto.processTransaction(legacy.doneTxn, { events: [] })).duplicate).toBe(true);
      // The held share of B is fed on the retry that comes without it; A's part was done.
      const retry = await crypto.processTransaction(legacy.heldTxn, { events: [] });
      expect(retry.devices.map((d) => d.userId)).toEqual([B]);
      // The old files are kept, renamed; the accounts are in the root's database.
      expect(await exists(join(root, 'appservice-state.jsonl'))).toBe(false);
      expect(await exists(join(root, 'appservice-state.jsonl.migrated'))).toBe(true);
      expect(await exists(join(root, 'devices'))).toBe(false);
      expect(await exists(join(root, 'devices.migrated'))).toBe(true);
      await crypto.close();
      const accounts = await OlmMachine.listAccounts({ kind: 'sqlite', path: root });
      expect(accounts.map((a) => a.userId)).toEqual([A, B]);
      expect(accounts.every((a) => a.encrypted === (passphrase !== undefined))).toBe(true);

      // Reopened: nothing migrated again, everything still there.
      const again = await open();
      expect(again.devices).toEqual(crypto.devices);
      expect(await again.withMachine(A, async (m) => m.identityKeys.curve25519)).toBe(legacy.devices[0]!.curve25519);
      expect((await again.processTransaction(legacy.heldTxn, { events: [] })).duplicate).toBe(true);
    });
  }

  it("keeps a device whose folder is the crate's own store in that folder", async () => {
    const root = await tempRoot();
    const legacy = await writeLegacyRoot(root, [A, B], undefined, true);
    const fake = new FakeAppserviceHomeserver();
    for (const d of legacy.devices) fake.devices.set(d.userId, new Set([d.deviceId]));
    const crypto = await opener(root, fake)();
    for (const d of legacy.devices) {
      expect(await crypto.withMachine(d.userId, async (m) => m.identityKeys.curve25519)).toBe(d.curve25519);
    }
    const folderOfB = join(root, 'devices', encodeURIComponent(B), encodeURIComponent(legacy.devices[1]!.deviceId));
    // A moved into the root's database; B stays in its folder, so devices/ stays.
    expect((await OlmMachine.listAccounts({ kind: 'sqlite', path: root })).map((a) => a.userId)).toEqual([A]);
    expect(await exists(join(folderOfB, 'matrix-sdk-crypto.sqlite3'))).toBe(true);
    expect(await exists(join(root, 'appservice-state.jsonl.migrated'))).toBe(true);
    await crypto.close();
    const again = await opener(root, fake)();
    expect(await again.withMachine(B, async (m) => m.identityKeys.curve25519)).toBe(legacy.devices[1]!.curve25519);
    expect(await again.deleteDevice(B)).toBe(true);
    expect(await exists(folderOfB)).toBe(false);
  });
});

describe('one database', () => {
  it('keeps every device in the root database; deleteDevice deletes its account there', async () => {
    const root = await tempRoot();
    const fake = new FakeAppserviceHomeserver();
    const crypto = await opener(root, fake)();
    const a = await crypto.deviceFor(A);
    const b = await crypto.deviceFor(B);
    const list = async () => (await OlmMachine.listAccounts({ kind: 'sqlite', path: root })).map((x) => `${x.userId} ${x.deviceId}`);
    expect(await list()).toEqual([`${A} ${a.deviceId}`, `${B} ${b.deviceId}`]);
    expect(await exists(join(root, 'devices'))).toBe(false);
    expect(await crypto.deleteDevice(A)).toBe(true);
    expect(await list()).toEqual([`${B} ${b.deviceId}`]);
  });

  it('names a bad store option', async () => {
    const root = await tempRoot();
    const open = opener(root, new FakeAppserviceHomeserver());
    const err = (store: unknown) => open({ store: store as AppserviceCryptoOptions['store'] }).catch((e: unknown) => e);
    expect(await err({ kind: 'mysql' })).toMatchObject({ code: 'InvalidArgument', field: 'options.store.kind' });
    expect(await err({ kind: 'sqlite', path: '/elsewhere' })).toMatchObject({ field: 'options.store.path' });
    expect(await err({ kind: 'postgres', url: 5 })).toMatchObject({ field: 'options.store.url' });
    expect(await err({ kind: 'postgres', host: 'db', port: -1, user: 'x' })).toMatchObject({ field: 'options.store.port' });
    expect(await err({ kind: 'postgres', host: 'db' })).toMatchObject({ field: 'options.store.user' });
    expect(await err('sqlite')).toMatchObject({ field: 'options.store' });
  });
});

/** State that must survive a reopen, on the given store. */
async function survivesReopen(open: (extra?: Partial<AppserviceCryptoOptions>) => Promise<AppserviceCrypto>, fake: FakeAppserviceHomeserver): Promise<void> {
  const crypto = await open();
  const a = await crypto.deviceFor(A);
  await crypto.deviceFor(B);
  const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
  fake.rooms.set(ROOM, [ALICE, A, B]);
  const event = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'key comes after a restart' });
  // The event comes first (membership with it); its key waits in A's inbox.
  const early = await crypto.processTransaction('r1', fake.transaction([], [member(A), event]));
  expect(early.events[1]).toMatchObject({ kind: 'undecryptable', error: { code: 'MissingRoomKey' } });
  // A transaction handed to the bridge whose handling failed (the process "died" in onResult).
  const failing = await crypto.processTransaction('r2', { events: [member(B)] }, { onResult: () => Promise.reject(new Error('bridge died')) }).catch((e: unknown) => e);
  expect(failing).toMatchObject({ message: 'bridge died' });
  await crypto.close();

  const again = await open();
  expect(again.devices.map((d) => d.userId)).toEqual([A, B]);
  expect((await again.processTransaction('r1', { events: [] })).duplicate).toBe(true);
  // The key arrives after the restart: the waiting event decrypts, handed over once.
  const later = await again.processTransaction('r3', fake.transaction([a]));
  expect(later.lateDecryptions).toHaveLength(1);
  expect(later.lateDecryptions[0]).toMatchObject({ kind: 'decrypted', decryptedBy: A, decrypted: { event: { content: { body: 'key comes after a restart' } } } });
  expect((await again.processTransaction('r4', { events: [] })).lateDecryptions).toEqual([]);
  // The failed one comes again, marked; once recorded it is a duplicate.
  const seen: boolean[] = [];
  const redo = await again.processTransaction('r2', { events: [member(B)] }, { onResult: (r) => void seen.push(r.redelivery) });
  expect(redo.redelivery).toBe(true);
  expect(seen).toEqual([true]);
  expect((await again.processTransaction('r2', { events: [] })).duplicate).toBe(true);
  const fresh = await again.processTransaction('r5', { events: [] }, { onResult: (r) => void seen.push(r.redelivery) });
  expect(fresh.redelivery).toBe(false);
}

describe('state across reopen', () => {
  it('on SQLite: devices, processed and handed transactions, events waiting for their key', async () => {
    const fake = new FakeAppserviceHomeserver();
    await survivesReopen(opener(await tempRoot(), fake), fake);
  });
});

describe('on PostgreSQL', () => {
  let pg: TestPostgres | undefined;
  beforeAll(() => {
    pg = startPostgres();
  });
  afterAll(() => pg?.stop());
  let n = 0;
  /** A fresh appservice name per test: the server's tables are shared by the file's tests. */
  const reg = () => ({ ...registration, sender_localpart: `bridgebot${++n}` });

  it('state survives reopen', async (ctx) => {
    if (!pg) return ctx.skip();
    const fake = new FakeAppserviceHomeserver();
    await survivesReopen(opener(await tempRoot(), fake, { store: { kind: 'postgres', url: pg.url }, registration: reg(), storePassphrase: 'pg secret' }), fake);
  });

  it('a second manager waits for the first one’s lease and then sees its state', async (ctx) => {
    if (!pg) return ctx.skip();
    const fake = new FakeAppserviceHomeserver();
    const base = { store: { kind: 'postgres' as const, url: pg.url }, registration: reg() };
    const first = await opener(await tempRoot(), fake, base)();
    const dev = await first.deviceFor(A);
    let standby = 0;
    let opened = false;
    const second = opener(await tempRoot(), fake, { ...base, onStandby: () => void standby++ })().then((c) => {
      opened = true;
      return c;
    });
    await new Promise((r) => setTimeout(r, 1500));
    expect(standby).toBe(1);
    expect(opened).toBe(false);
    await first.processTransaction('p1', { events: [] });
    await first.close();
    const taken = await second;
    expect(taken.devices).toEqual([dev]);
    expect((await taken.processTransaction('p1', { events: [] })).duplicate).toBe(true);
    expect(await taken.withMachine(A, async (m) => m.deviceId)).toBe(dev.deviceId);
  });

  it('a process that lost the lease stops listening, and the new holder binds the port', async (ctx) => {
    if (!pg) return ctx.skip();
    const fake = new FakeAppserviceHomeserver();
    const r = reg();
    const base = { store: { kind: 'postgres' as const, url: pg.url }, registration: r };
    const first = await opener(await tempRoot(), fake, base)();
    const server1 = await serveAppservice(first, { port: 0 });
    cleanup.push(() => server1.close().catch(() => undefined));
    // Stands in for a pause of the first process past its lease: the lease is given up under it.
    const holder = (first as unknown as { state: { holder: string } }).state.holder;
    const db = await openAppserviceStore({ kind: 'postgres', postgres: { url: pg.url } }, r.sender_localpart);
    await db.release(holder);
    await db.close();
    const second = await opener(await tempRoot(), fake, base)();
    // The port is still the first process's: listening is retried until it lets go.
    const serving = serveAppservice(second, { port: server1.port });
    // The first process learns it lost the lease from its next write (or its next renewal).
    const refused = await first.processTransaction('after-loss', { events: [] }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: expect.stringMatching(/^(StoreLocked|LeaseLost)$/) });
    expect(await first.processTransaction('after-loss-2', { events: [] }).catch((e: unknown) => e)).toMatchObject({ name: 'AppserviceError', code: 'LeaseLost' });
    const server2 = await serving;
    cleanup.push(() => server2.close());
    expect(server2.port).toBe(server1.port);
    const res = await fetch(`http://127.0.0.1:${server2.port}/_matrix/app/v1/transactions/via-http`, {
      method: 'PUT',
      headers: { Authorization: `Bearer ${HS_TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ events: [] }),
    });
    expect(res.status).toBe(200);
    expect((await second.processTransaction('via-http', { events: [] })).duplicate).toBe(true);
    expect((await second.processTransaction('after-loss', { events: [] })).duplicate).toBe(false);
  });
});
