/**
 * Writes a store root of the layout before the appservice state moved into the store engine,
 * with the code that wrote it then: the journal `appservice-state.jsonl` by that release's
 * `AppserviceState` (./legacy/appservice-state-v1.ts) and one SQLite folder per device at
 * `devices/<url-encoded user id>/<url-encoded device id>` (that release's `defaultDeviceStore`),
 * each opened with `OlmMachine.open`. Device A holds a room key, so a test can tell whether the
 * keys survived a migration. With `crateStoreForB`, B's folder is one of the crate's own store
 * (matrix-sdk-sqlite), as releases before our engine wrote it.
 */
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OlmMachine } from '../../src/index';
import type { RoomEvent } from '../../src/transport';
import { AppserviceState as LegacyState } from './legacy/appservice-state-v1';

export interface LegacyRoot {
  /** The bridged devices, with their Curve25519 identity keys. */
  devices: Array<{ userId: string; deviceId: string; curve25519: string }>;
  /** A room event device A holds the key of. */
  encrypted: RoomEvent;
  roomId: string;
  /** A transaction recorded as processed. */
  doneTxn: string;
  /** A transaction that failed half-way: device B's share is held. */
  heldTxn: string;
}

export async function writeLegacyRoot(root: string, users: [string, string], passphrase?: string, crateStoreForB = false): Promise<LegacyRoot> {
  const roomId = '!legacy:example.org';
  const bob = await OlmMachine.open({ userId: '@bob:example.org', deviceId: 'BOB', store: { kind: 'memory' } });
  await bob.shareRoomKey(roomId, ['@bob:example.org']);
  const content = await bob.encryptRoomEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'kept across the migration' });
  const encrypted: RoomEvent = { type: 'm.room.encrypted', event_id: '$legacy', room_id: roomId, sender: '@bob:example.org', origin_server_ts: Date.now(), content };
  const keys = await bob.exportRoomKeys({ roomId });
  await bob.close();

  const state = await LegacyState.open(root);
  const devices: LegacyRoot['devices'] = [];
  for (const [i, userId] of users.entries()) {
    const deviceId = `LEGACY${i}`;
    await state.recordDevice(userId, deviceId, true);
    const path = join(root, 'devices', encodeURIComponent(userId), encodeURIComponent(deviceId));
    const kind = crateStoreForB && i === 1 ? ('sqlite-crate' as const) : ('sqlite' as const);
    const store = passphrase === undefined ? { kind, path } : { kind, path, passphrase };
    const machine = await OlmMachine.open({ userId, deviceId, store });
    if (i === 0) await machine.importRoomKeys(keys);
    devices.push({ userId, deviceId, curve25519: machine.identityKeys.curve25519 });
    await machine.close();
  }
  const [a, b] = devices as [LegacyRoot['devices'][0], LegacyRoot['devices'][0]];
  await state.recordMembership([{ roomId, userId: a.userId, joined: true }]);
  await state.recordListChanges(['@carol:example.org'], []);
  await state.recordSeen(a.userId, state.listSeq);
  await state.recordTransaction('legacy-done');
  await state.recordPart('legacy-held', `${a.userId}|${a.deviceId}`);
  await state.recordHeld('legacy-held', `${b.userId}|${b.deviceId}`, {
    userId: b.userId,
    deviceId: b.deviceId,
    toDeviceEvents: [{ type: 'm.dummy', sender: '@carol:example.org', content: {} }],
  });
  await state.flush();
  // A crash mid-write left a torn last line.
  await appendFile(join(root, 'appservice-state.jsonl'), '{"t":"device","userId":"@puppet_torn:exa');
  return { devices, encrypted, roomId, doneTxn: 'legacy-done', heldTxn: 'legacy-held' };
}
