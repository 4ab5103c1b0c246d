import { describe, it, expect, beforeAll, afterAll, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MatrixCryptoError, OlmMachine, type StoreOptions } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';
import { postgresInstalled, startPostgres, type TestPostgres } from './helpers/postgres';

const ROOM = '!room:example.org';

async function rejection(p: Promise<unknown>): Promise<MatrixCryptoError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MatrixCryptoError);
  return err as MatrixCryptoError;
}

/**
 * What every kind that persists must do: room keys and Olm sessions survive a reopen, several
 * accounts live in one database, listed and deleted one by one.
 */
function persistentStoreSuite(name: string, storeFor: () => { store: StoreOptions; database: Parameters<typeof OlmMachine.listAccounts>[0] }) {
  describe(name, () => {
    it('keeps room keys and Olm sessions across a reopen: messages both ways afterwards', async () => {
      const { store } = storeFor();
      const hs = new TestHomeserver();
      const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
      const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB', store);
      const keys = bob.machine.identityKeys;

      const first = await alice.sendMessage(ROOM, [alice.userId, bob.userId], { body: 'before' });
      await bob.sync();
      await bob.machine.close();

      bob.machine = await OlmMachine.open({ userId: bob.userId, deviceId: 'BOB', store });
      expect(bob.machine.identityKeys).toEqual(keys);
      expect((await bob.machine.decryptRoomEvent(first, ROOM)).event.content).toMatchObject({ body: 'before' });
      const reply = await bob.sendMessage(ROOM, [alice.userId, bob.userId], { body: 'reply after reopen' });
      await alice.sync();
      expect((await alice.machine.decryptRoomEvent(reply, ROOM)).event.content).toMatchObject({ body: 'reply after reopen' });
      await bob.machine.close();
      await alice.machine.close();
    });

    it('holds many accounts in one database, each opened once, listed and deleted one by one', async () => {
      const { store, database } = storeFor();
      const users = ['@u1:example.org', '@u2:example.org', '@u3:example.org'];
      const machines = await Promise.all(users.map((userId) => OlmMachine.open({ userId, deviceId: 'DEV', store })));
      const keys = machines.map((m) => m.identityKeys.ed25519);
      expect(new Set(keys).size).toBe(3);

      const twice = await rejection(OlmMachine.open({ userId: users[0], deviceId: 'DEV', store }));
      expect(twice.code).toBe('StoreLocked');
      const whileOpen = await rejection(OlmMachine.deleteAccount(database, users[0], 'DEV'));
      expect(whileOpen.code).toBe('StoreLocked');
      await Promise.all(machines.map((m) => m.close()));

      const listed = await OlmMachine.listAccounts(database);
      const ours = listed.filter((a) => users.includes(a.userId));
      expect(ours.map((a) => [a.userId, a.deviceId])).toEqual(users.map((u) => [u, 'DEV']));
      expect(ours.every((a) => a.rows > 0 && !a.encrypted)).toBe(true);

      expect(await OlmMachine.deleteAccount(database, users[1], 'DEV')).toBe(true);
      expect(await OlmMachine.deleteAccount(database, users[1], 'DEV')).toBe(false);
      const after = (await OlmMachine.listAccounts(database)).filter((a) => users.includes(a.userId)).map((a) => a.userId);
      expect(after).toEqual([users[0], users[2]]);

      const kept = await OlmMachine.open({ userId: users[2], deviceId: 'DEV', store });
      expect(kept.identityKeys.ed25519).toBe(keys[2]);
      await kept.close();
      const fresh = await OlmMachine.open({ userId: users[1], deviceId: 'DEV', store });
      expect(fresh.identityKeys.ed25519).not.toBe(keys[1]);
      await fresh.close();
    });

    it('refuses a wrong passphrase with StorePassphrase and keeps the account readable', async () => {
      const { store } = storeFor();
      const withPass = { ...store, passphrase: 'right' } as StoreOptions;
      const m = await OlmMachine.open({ userId: '@pass:example.org', deviceId: 'P', store: withPass });
      const keys = m.identityKeys;
      await m.close();
      const err = await rejection(OlmMachine.open({ userId: '@pass:example.org', deviceId: 'P', store: { ...withPass, passphrase: 'wrong' } as StoreOptions }));
      expect(err.code).toBe('StorePassphrase');
      expect(err.field).toBe('store.passphrase');
      const again = await OlmMachine.open({ userId: '@pass:example.org', deviceId: 'P', store: withPass });
      expect(again.identityKeys).toEqual(keys);
      await again.close();
    });
  });
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mcn-stores-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

persistentStoreSuite('sqlite (our engine)', () => {
  const path = join(dir, 'db');
  return { store: { kind: 'sqlite', path }, database: { kind: 'sqlite', path } };
});

describe('sqlite folders written by matrix-sdk-sqlite', () => {
  it('open with the crate store, unchanged, under kind sqlite', async () => {
    const path = join(dir, 'crate');
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
    const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB', { kind: 'sqlite-crate', path, passphrase: '' });
    const keys = bob.machine.identityKeys;
    const event = await alice.sendMessage(ROOM, [alice.userId, bob.userId], { body: 'kept' });
    await bob.sync();
    await bob.machine.close();
    expect(readdirSync(path)).toContain('matrix-sdk-crypto.sqlite3');

    bob.machine = await OlmMachine.open({ userId: bob.userId, deviceId: 'BOB', store: { kind: 'sqlite', path, passphrase: '' } });
    expect(bob.machine.identityKeys).toEqual(keys);
    expect((await bob.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'kept' });
    await bob.machine.close();
    expect(existsSync(join(path, 'matrix-crypto-node.sqlite3'))).toBe(false);

    const listing = await rejection(OlmMachine.listAccounts({ kind: 'sqlite', path }));
    expect(listing.code).toBe('InvalidArgument');
    await alice.machine.close();
  });

  it('a new sqlite folder gets our engine, and a second process is refused', async () => {
    const path = join(dir, 'engine');
    const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: { kind: 'sqlite', path } });
    expect(readdirSync(path)).toContain('matrix-crypto-node.sqlite3');
    expect(readdirSync(path)).not.toContain('matrix-sdk-crypto.sqlite3');
    const crate = await rejection(OlmMachine.open({ userId: '@b:example.org', deviceId: 'B', store: { kind: 'sqlite-crate', path } }));
    expect(crate.code).toBe('StoreLocked');
    await m.close();
  });
});

describe('store options', () => {
  it('name the bad field', async () => {
    const open = (store: unknown) => rejection(OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: store as StoreOptions }));
    expect((await open({ kind: 'postgres' })).field).toBe('store.user');
    expect((await open({ kind: 'postgres', url: 'host=/tmp', host: 'x' })).field).toBe('store.url');
    expect((await open({ kind: 'postgres', host: 'localhost' })).field).toBe('store.user');
    expect((await open({ kind: 'postgres', url: 'host=/tmp user=x', maxConnections: 0 })).field).toBe('store.maxConnections');
    expect((await open({ kind: 'postgres', user: 'x', port: 70000 })).field).toBe('store.port');
    expect((await open({ kind: 'sqlite-crate' })).field).toBe('store.path');
    expect((await open({ kind: 'postgres', url: 42 })).field).toBe('store.url');
  });

  it('name the bad TLS field, or the url when it was given there', async () => {
    const open = (store: unknown) => rejection(OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: store as StoreOptions }));
    const base = { kind: 'postgres', host: 'db.example.org', user: 'bot' };
    const cases: [unknown, string][] = [
      [{ ...base, sslmode: 'verify-all' }, 'store.sslmode'],
      [{ ...base, sslmode: 1 }, 'store.sslmode'],
      [{ ...base, sslmode: 'verify-full', sslrootcert: '/nonexistent/ca.crt' }, 'store.sslrootcert'],
      [{ ...base, sslmode: 'verify-ca', sslrootcert: 'system' }, 'store.sslrootcert'],
      [{ ...base, sslkey: '/nonexistent/client.key' }, 'store.sslkey'],
      [{ ...base, sslcert: '/nonexistent/client.crt', sslkey: '/nonexistent/client.key' }, 'store.sslcert'],
      [{ kind: 'postgres', url: 'host=db user=bot sslmode=verify-all' }, 'store.url'],
      [{ kind: 'postgres', url: 'postgresql://bot@db/crypto?sslmode=require', sslmode: 'verify-full' }, 'store.sslmode'],
    ];
    for (const [store, field] of cases) {
      const err = await open(store);
      expect([err.code, err.field, err.message.startsWith(`${field}: `)], JSON.stringify(store)).toEqual(['InvalidArgument', field, true]);
    }
  });
});

let pg: TestPostgres | undefined;
beforeAll(() => {
  pg = startPostgres();
});
afterAll(() => {
  pg?.stop();
});

// Whether it is installed is known when the file is collected; the server starts in beforeAll.
describe.runIf(postgresInstalled())('postgres', () => {
  persistentStoreSuite('postgres (our engine)', () => ({
    store: { kind: 'postgres', url: pg!.url },
    database: { kind: 'postgres', url: pg!.url },
  }));

  it('takes the connection as parts too', async () => {
    const m = await OlmMachine.open({ userId: '@parts:example.org', deviceId: 'P', store: { kind: 'postgres', host: pg!.dir, user: 'postgres', database: 'postgres' } });
    await m.close();
    const listed = await OlmMachine.listAccounts({ kind: 'postgres', host: pg!.dir, user: 'postgres' });
    expect(listed.some((a) => a.userId === '@parts:example.org')).toBe(true);
  });

  describe('over TLS (a server whose certificate a test CA signed)', () => {
    let tls: TestPostgres | undefined;
    beforeAll(() => {
      tls = startPostgres('tls');
    });
    afterAll(() => {
      tls?.stop();
    });
    const ca = (name = 'ca.crt') => join(tls!.tls!.files, name);

    it('opens with sslmode=verify-full and the CA in the url, and with the same as fields', async () => {
      const url = `postgresql://postgres@localhost:${tls!.tls!.port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca())}`;
      const m = await OlmMachine.open({ userId: '@tls:example.org', deviceId: 'T', store: { kind: 'postgres', url } });
      await m.close();
      const parts = { kind: 'postgres', host: 'localhost', port: tls!.tls!.port, user: 'postgres', sslmode: 'verify-full', sslrootcert: ca() } as const;
      const again = await OlmMachine.open({ userId: '@tls:example.org', deviceId: 'T', store: parts });
      await again.close();
      const listed = await OlmMachine.listAccounts(parts);
      expect(listed.map((a) => a.userId)).toContain('@tls:example.org');
    });

    it('refuses a server certificate another CA signed, naming where the mode was given', async () => {
      const store = { kind: 'postgres', host: 'localhost', port: tls!.tls!.port, user: 'postgres', sslmode: 'verify-full', sslrootcert: ca('other-ca.crt') } as const;
      const err = await rejection(OlmMachine.open({ userId: '@tls:example.org', deviceId: 'W', store }));
      expect([err.code, err.field]).toEqual(['StoreError', 'store.sslmode']);
      expect(err.message).toContain('not signed by a certificate authority of sslrootcert');
      const url = `${tls!.url} sslmode=verify-full sslrootcert=${ca('other-ca.crt')}`;
      const inUrl = await rejection(OlmMachine.open({ userId: '@tls:example.org', deviceId: 'W', store: { kind: 'postgres', url } }));
      expect([inUrl.code, inUrl.field]).toEqual(['StoreError', 'store.url']);
    });
  });
});
