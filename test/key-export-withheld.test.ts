import { describe, it, expect } from 'vitest';
import * as wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { DecryptionError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { ALICE, BOB, FIELD, ROOM, partiallyWithheld } from './helpers/partially-withheld';

describe('withheld metadata in room-key exports', () => {
  it('exports carry the withheld record of a partially withheld session, and import restores it', async () => {
    const { hs, alice, early, late } = await partiallyWithheld();
    const exported = await alice.machine.exportRoomKeys({ roomId: ROOM });
    expect(exported).toHaveLength(1);
    expect(exported[0][FIELD]).toEqual({ code: 'm.unverified', reason: expect.any(String), first_known_index: 1 });

    const fresh = await TestDevice.create(hs, ALICE, 'A3');
    const result = await fresh.machine.importRoomKeys(exported);
    expect(result).toMatchObject({ imported: 1, withheldRecords: 1 });
    expect((await fresh.machine.decryptRoomEvent(late, ROOM)).event.content).toMatchObject({ body: 'late' });
    const err = await fresh.machine.decryptRoomEvent(early, ROOM).catch((e) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.withheld).toMatchObject({ code: 'm.unverified', scope: 'before_first_index' });
    expect(await fresh.machine.getWithheldRecords(ROOM, String(early.content.session_id))).toEqual([
      expect.objectContaining({ source: 'key_export', code: 'm.unverified' }),
    ]);
  });

  it('fully held sessions carry no field; exports without it import as before', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'A1');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.sendMessage(ROOM, [ALICE, BOB]);
    await alice.sync();
    const [key] = await alice.machine.exportRoomKeys();
    expect(key).not.toHaveProperty(FIELD);
    const other = await TestDevice.create(hs, ALICE, 'A2');
    expect(await other.machine.importRoomKeys([key])).toMatchObject({ imported: 1, withheldRecords: 0 });
  });

  it('a client that does not know the field (the official wasm bindings) still imports the export', async () => {
    const { alice } = await partiallyWithheld();
    const exported = await alice.machine.exportRoomKeys();
    expect(exported[0]).toHaveProperty(FIELD);
    await wasm.initAsync();
    const peer = await wasm.OlmMachine.initialize(new wasm.UserId('@peer:example.org'), new wasm.DeviceId('PEER'));
    const result = await peer.importExportedRoomKeys(JSON.stringify(exported), () => undefined);
    expect(result.importedCount).toBe(1);
  });
});

describe('encrypted key-export files', () => {
  it('round-trip through a passphrase-protected file, keeping the withheld extension', async () => {
    const { hs, alice, early } = await partiallyWithheld();
    const file = await alice.machine.exportRoomKeysFile('correct horse', { rounds: 1_000 });
    expect(file.split('\n')[0]).toBe('-----BEGIN MEGOLM SESSION DATA-----');
    expect(file).not.toContain('m.unverified');

    const fresh = await TestDevice.create(hs, ALICE, 'A4');
    await expect(fresh.machine.importRoomKeysFile(file, 'wrong')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'passphrase' });
    await expect(fresh.machine.importRoomKeysFile('not a file', 'x')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'file' });
    const result = await fresh.machine.importRoomKeysFile(file, 'correct horse');
    expect(result).toMatchObject({ imported: 1, withheldRecords: 1 });
    expect((await fresh.machine.decryptRoomEvent(early, ROOM).catch((e) => e)).withheld).toMatchObject({ scope: 'before_first_index' });
  });

  it('files written by the official wasm bindings import, and they import ours', async () => {
    const { alice } = await partiallyWithheld();
    await wasm.initAsync();
    const peer = await wasm.OlmMachine.initialize(new wasm.UserId('@peer:example.org'), new wasm.DeviceId('PEER'));
    const ours = await alice.machine.exportRoomKeysFile('pw', { rounds: 1_000 });
    const decrypted = wasm.OlmMachine.decryptExportedRoomKeys(ours, 'pw');
    expect((await peer.importExportedRoomKeys(decrypted, () => undefined)).importedCount).toBe(1);

    const theirs = wasm.OlmMachine.encryptExportedRoomKeys(await peer.exportRoomKeys(() => true), 'pw2', 1_000);
    const hs = new TestHomeserver();
    const other = await TestDevice.create(hs, '@other:example.org', 'O');
    expect(await other.machine.importRoomKeysFile(theirs, 'pw2')).toMatchObject({ imported: 1 });
  });
});
