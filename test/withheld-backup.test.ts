import { describe, it, expect } from 'vitest';
import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { DecryptionError, type KeyBackup, type KeysBackupRequest } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { ALICE, BOB, FIELD, ROOM, partiallyWithheld } from './helpers/partially-withheld';
import { WasmDevice } from './helpers/wasm-device';

const ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';

/** Enable a new backup on `device`, upload everything, and return the key and what the server holds. */
async function backUp(device: TestDevice, version = '1') {
  const key = await device.machine.createBackupKey();
  await device.machine.enableBackup({ publicKey: key.publicKey, version });
  const server: KeyBackup = { rooms: {} };
  let request: KeysBackupRequest | null;
  while ((request = await device.machine.backupRoomKeys())) {
    expect(request.version).toBe(version);
    for (const [room, { sessions }] of Object.entries((JSON.parse(request.body) as KeyBackup).rooms)) {
      Object.assign(((server.rooms[room] ??= { sessions: {} }).sessions), sessions);
    }
    await device.machine.markRequestAsSent(request, { etag: 'e', count: 1 });
  }
  return { key, server };
}

async function wasmKey(decryptionKey: string) {
  await wasm.initAsync();
  return wasm.BackupDecryptionKey.fromBase64(decryptionKey);
}

/** The decrypted session data of one backed-up key, read with the official wasm bindings. */
async function decryptWithWasm(server: KeyBackup, decryptionKey: string, room: string, sessionId: string) {
  const { session_data: d } = server.rooms[room].sessions[sessionId];
  return JSON.parse((await wasmKey(decryptionKey)).decryptV1(d.ephemeral, d.mac, d.ciphertext)) as Record<string, unknown>;
}

describe('withheld metadata in server-side key backup', () => {
  it('backs up a partially withheld session with the field; a restore on a fresh device explains the gap', async () => {
    const { hs, alice, early, late, sessionId } = await partiallyWithheld();
    const [record] = await alice.machine.getWithheldRecords(ROOM, sessionId);
    expect(record.code).toBe('m.unverified');

    const { key, server } = await backUp(alice);
    expect(await alice.machine.backupRoomKeyCounts()).toEqual({ total: 1, backedUp: 1 });
    expect(server.rooms[ROOM].sessions[sessionId].first_message_index).toBe(1);
    const plaintext = await decryptWithWasm(server, key.decryptionKey, ROOM, sessionId);
    expect(plaintext[FIELD]).toEqual({ code: 'm.unverified', reason: record.reason, first_known_index: 1 });
    expect(JSON.stringify(server)).not.toContain('m.unverified');

    const fresh = await TestDevice.create(hs, ALICE, 'A2');
    const result = await fresh.machine.importBackedUpRoomKeys(server, key.decryptionKey, '1');
    expect(result).toMatchObject({ imported: 1, total: 1, withheldRecords: 1, undecryptable: [] });
    expect((await fresh.machine.decryptRoomEvent(late, ROOM)).event.content).toMatchObject({ body: 'late' });
    const err = await fresh.machine.decryptRoomEvent(early, ROOM).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect((err as DecryptionError).withheld).toEqual({ code: 'm.unverified', reason: record.reason, scope: 'before_first_index' });
    expect(await fresh.machine.getWithheldRecords(ROOM, sessionId)).toEqual([
      expect.objectContaining({ source: 'key_backup', code: 'm.unverified', reason: record.reason }),
    ]);

    // Restored keys count as backed up to the version they came from.
    await fresh.machine.enableBackup({ publicKey: key.publicKey, version: '1' });
    expect(await fresh.machine.backupRoomKeys()).toBeNull();
  });

  it('fully held sessions keep the standard payload; backups without the field restore', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'A1');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    const event = await bob.sendMessage(ROOM, [ALICE, BOB]);
    await alice.sync();
    const { key, server } = await backUp(alice, '3');
    const sessionId = String(event.content.session_id);
    expect(server.rooms[ROOM].sessions[sessionId].first_message_index).toBe(0);
    expect(await decryptWithWasm(server, key.decryptionKey, ROOM, sessionId)).not.toHaveProperty(FIELD);

    const fresh = await TestDevice.create(hs, ALICE, 'A2');
    expect(await fresh.machine.importBackedUpRoomKeys(JSON.stringify(server), key.decryptionKey, '3')).toMatchObject({
      imported: 1,
      withheldRecords: 0,
    });
    expect((await fresh.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'hello' });
  });

  it('enable, version and disable', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'A1');
    expect(await alice.machine.backupVersion()).toBeNull();
    expect(await alice.machine.backupRoomKeys()).toBeNull();
    const key = await alice.machine.createBackupKey();
    expect(JSON.parse(key.versionBody)).toEqual({
      algorithm: ALGORITHM,
      auth_data: { public_key: key.publicKey, signatures: { [ALICE]: { [`ed25519:A1`]: expect.any(String) } } },
    });
    expect((await wasmKey(key.decryptionKey)).megolmV1PublicKey.publicKeyBase64).toBe(key.publicKey);
    await alice.machine.enableBackup({ publicKey: key.publicKey, version: '9' });
    expect(await alice.machine.backupVersion()).toBe('9');
    await alice.machine.disableBackup();
    expect(await alice.machine.backupVersion()).toBeNull();
  });
});

describe('bad backup input is rejected with the field named', () => {
  it('keys, versions and malformed backups', async () => {
    const { hs, alice, sessionId } = await partiallyWithheld();
    const { key, server } = await backUp(alice);
    const fresh = await TestDevice.create(hs, ALICE, 'A2');
    const other = await fresh.machine.createBackupKey();
    const rejects = (p: Promise<unknown>, field: string) => expect(p).rejects.toMatchObject({ code: 'InvalidArgument', field });

    await rejects(fresh.machine.importBackedUpRoomKeys(server, other.decryptionKey, '1'), 'decryptionKey');
    await rejects(fresh.machine.importBackedUpRoomKeys(server, 'not a key', '1'), 'decryptionKey');
    await rejects(fresh.machine.importBackedUpRoomKeys(server, key.decryptionKey, ''), 'version');
    await rejects(fresh.machine.importBackedUpRoomKeys('{"rooms":', key.decryptionKey, '1'), 'backup');
    await rejects(fresh.machine.importBackedUpRoomKeys(42 as never, key.decryptionKey, '1'), 'backup');
    await rejects(fresh.machine.importBackedUpRoomKeys({} as never, key.decryptionKey, '1'), 'backup.rooms');
    await rejects(
      fresh.machine.importBackedUpRoomKeys({ rooms: { 'not-a-room': { sessions: {} } } }, key.decryptionKey, '1'),
      'backup.rooms["not-a-room"]',
    );
    const truncated = structuredClone(server);
    delete (truncated.rooms[ROOM].sessions[sessionId].session_data as Partial<{ mac: string }>).mac;
    await rejects(
      fresh.machine.importBackedUpRoomKeys(truncated, key.decryptionKey, '1'),
      `backup.rooms["${ROOM}"].sessions["${sessionId}"].session_data.mac`,
    );
    await rejects(fresh.machine.enableBackup({ publicKey: 'nope', version: '1' }), 'publicKey');
    await rejects(fresh.machine.enableBackup({ publicKey: key.publicKey, version: '' }), 'version');
    await rejects(fresh.machine.enableBackup(null as never), 'backup');
    expect(await fresh.machine.getWithheldRecords(ROOM, sessionId)).toEqual([]);
  });

  it('one backed-up key that does not decrypt is skipped and reported, the others restore', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'A1');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.sendMessage(ROOM, [ALICE, BOB]);
    await bob.sendMessage('!other:example.org', [ALICE, BOB]);
    await alice.sync();
    const { key, server } = await backUp(alice);
    const [sessionId] = Object.keys(server.rooms[ROOM].sessions);
    const [otherSession] = Object.values(server.rooms['!other:example.org'].sessions);
    // Another entry's ephemeral key: the MAC no longer matches.
    server.rooms[ROOM].sessions[sessionId].session_data.ephemeral = otherSession.session_data.ephemeral;

    const fresh = await TestDevice.create(hs, ALICE, 'A2');
    const result = await fresh.machine.importBackedUpRoomKeys(server, key.decryptionKey, '1');
    expect(result).toMatchObject({ imported: 1, total: 2 });
    expect(result.undecryptable).toEqual([{ roomId: ROOM, sessionId, error: expect.stringContaining('MAC') }]);
  });
});

describe('key backup interop with the official wasm bindings', () => {
  it('a wasm client restores our backup, the field ignored', async () => {
    const { alice, late, sessionId } = await partiallyWithheld();
    const { key, server } = await backUp(alice);
    const decrypted = await decryptWithWasm(server, key.decryptionKey, ROOM, sessionId);
    expect(decrypted).toHaveProperty(FIELD);

    const peer = await wasm.OlmMachine.initialize(new wasm.UserId(ALICE), new wasm.DeviceId('WASM'));
    const keys = new Map([[new wasm.RoomId(ROOM), new Map([[sessionId, decrypted]])]]);
    const result = await peer.importBackedUpRoomKeys(keys, () => undefined, '1');
    expect(result.importedCount).toBe(1);
    const event = await peer.decryptRoomEvent(JSON.stringify(late), new wasm.RoomId(ROOM), new wasm.DecryptionSettings(wasm.TrustRequirement.Untrusted));
    expect(JSON.parse(event.event).content).toMatchObject({ body: 'late' });
  });

  it('we restore a backup made by a wasm client (no field)', async () => {
    const hs = new TestHomeserver();
    const ours = await TestDevice.create(hs, ALICE, 'A1');
    const theirs = await WasmDevice.create(hs, BOB, 'WASM');
    const event = await theirs.sendMessage(ROOM, [ALICE, BOB], { msgtype: 'm.text', body: 'from wasm' });

    const key = await ours.machine.createBackupKey();
    await theirs.machine.enableBackupV1(key.publicKey, '5');
    const request = await theirs.machine.backupRoomKeys();
    expect(request).toBeDefined();
    const result = await ours.machine.importBackedUpRoomKeys(request!.body, key.decryptionKey, '5');
    expect(result).toMatchObject({ imported: 1, withheldRecords: 0, undecryptable: [] });
    expect((await ours.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'from wasm' });
  });
});
