import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MatrixCryptoError, OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

const ROOM = '!room:example.org';
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mcn-store-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The database file's bytes, once SQLite has folded its write-ahead log back in after close. */
async function snapshot(path: string) {
  for (let i = 0; i < 100 && readdirSync(path).some((f) => f.endsWith('-wal')); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  expect(readdirSync(path).filter((f) => f.endsWith('-wal'))).toEqual([]);
  const file = readdirSync(path).find((f) => f === 'matrix-crypto-node.sqlite3' || f === 'matrix-sdk-crypto.sqlite3')!;
  return readFileSync(join(path, file)).toString('base64');
}

const deviceKeyUploads = (hs: TestHomeserver, from: string) =>
  hs.requestLog.filter((r) => r.from === from && r.type === 'keys_upload' && r.body.device_keys).length;

describe('SQLite store', () => {
  it('close() returns once the store is closed: no write-ahead log left, and the folder can be deleted and a new store created there', async () => {
    const path = join(dir, 'reused');
    for (let i = 0; i < 10; i++) {
      const m = await OlmMachine.open({ userId: '@reuse:example.org', deviceId: `D${i}`, store: { kind: 'sqlite', path } });
      const upload = (await m.outgoingRequests()).find((r) => r.type === 'keys_upload')!;
      await m.markRequestAsSent(upload, { one_time_key_counts: { signed_curve25519: 50 } });
      await m.close();
      expect(readdirSync(path).filter((f) => f.endsWith('-wal') || f.endsWith('-shm'))).toEqual([]);
      rmSync(path, { recursive: true, force: true });
    }
  });

  it('restores identity keys and room keys after close and reopen, without re-uploading keys', async () => {
    const hs = new TestHomeserver();
    const store = { kind: 'sqlite' as const, path: join(dir, 'bob'), passphrase: 'secret' };
    const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
    const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB', store);
    const keys = bob.machine.identityKeys;
    expect(deviceKeyUploads(hs, '@bob:example.org|BOB')).toBe(1);

    const event = await alice.sendMessage(ROOM, [alice.userId, bob.userId], { body: 'before restart' });
    await bob.sync();
    await bob.machine.close();
    expect(bob.machine.isClosed).toBe(true);
    const closed = await bob.machine.decryptRoomEvent(event, ROOM).catch((e) => e);
    expect(closed).toBeInstanceOf(MatrixCryptoError);
    expect(closed.code).toBe('MachineClosed');

    bob.machine = await OlmMachine.open({ userId: bob.userId, deviceId: 'BOB', store });
    expect(bob.machine.identityKeys).toEqual(keys);
    expect((await bob.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'before restart' });
    // Device keys are not uploaded again; one-time keys are only topped up with new ids (the
    // test homeserver throws on a one-time key id uploaded twice).
    await bob.sync();
    expect(deviceKeyUploads(hs, '@bob:example.org|BOB')).toBe(1);

    // The Olm session survived too: a new room key reaches the reopened device.
    const later = await alice.sendMessage('!second:example.org', [alice.userId, bob.userId], { body: 'after restart' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(later, '!second:example.org')).event.content).toMatchObject({ body: 'after restart' });
    await bob.machine.close();
  });

  it('rejects a wrong passphrase clearly and leaves the store intact', async () => {
    const path = join(dir, 'store');
    const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: { kind: 'sqlite', path, passphrase: 'right' } });
    const keys = m.identityKeys;
    await m.close();
    const before = await snapshot(path);
    const err = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: { kind: 'sqlite', path, passphrase: 'wrong' } }).catch((e) => e);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err.code).toBe('StorePassphrase');
    expect(err.field).toBe('store.passphrase');
    expect(await snapshot(path)).toEqual(before);
    const again = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: { kind: 'sqlite', path, passphrase: 'right' } });
    expect(again.identityKeys).toEqual(keys);
    await again.close();
  });

  // Our engine keeps any number of accounts in a folder (test/store.test.ts); the crate's store
  // holds one and refuses the others.
  it('refuses to open a crate store that belongs to another account', async () => {
    const path = join(dir, 'store');
    await (await OlmMachine.open({ userId: '@a:example.org', deviceId: 'A', store: { kind: 'sqlite-crate', path } })).close();
    const err = await OlmMachine.open({ userId: '@b:example.org', deviceId: 'B', store: { kind: 'sqlite', path } }).catch((e) => e);
    expect(err.code).toBe('StoreMismatchedAccount');
  });
});
