import { describe, it, expect } from 'vitest';
import { DecryptionError, MatrixCryptoError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

const ROOM = '!room:example.org';

async function pair() {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  return { hs, alice, bob };
}

describe('OlmMachine: two devices on the test homeserver', () => {
  it('uploads device keys and one-time keys on first use', async () => {
    const { hs, alice } = await pair();
    expect(hs.deviceKeys.get('@alice:example.org')?.get('ALICE')?.keys).toHaveProperty(
      `curve25519:ALICE`,
      alice.machine.identityKeys.curve25519,
    );
    expect(hs.oneTimeKeyCount('@alice:example.org', 'ALICE')).toBeGreaterThan(0);
    expect(await alice.machine.outgoingRequests()).toEqual([]);
  });

  it('shares a room key, encrypts and decrypts in both directions', async () => {
    const { alice, bob } = await pair();
    const members = [alice.userId, bob.userId];

    const event = await alice.sendMessage(ROOM, members, { msgtype: 'm.text', body: 'hi bob' });
    const sync = await bob.sync();
    expect(sync.roomKeyUpdates).toHaveLength(1);
    expect(sync.roomKeyUpdates[0]).toMatchObject({ roomId: ROOM, senderKey: alice.machine.identityKeys.curve25519 });
    const roomKey = sync.toDeviceEvents.find((e) => e.kind === 'decrypted' && e.event.type === 'm.room_key');
    expect(roomKey?.kind === 'decrypted' && roomKey.encryptionInfo).toEqual({
      sender: alice.userId,
      senderDevice: null,
      senderCurve25519Key: alice.machine.identityKeys.curve25519,
    });

    const decrypted = await bob.machine.decryptRoomEvent(event, ROOM);
    expect(decrypted.event.content).toEqual({ msgtype: 'm.text', body: 'hi bob' });
    expect(decrypted.sender).toBe(alice.userId);
    expect(decrypted.senderDevice).toBe('ALICE');
    expect(decrypted.senderCurve25519Key).toBe(alice.machine.identityKeys.curve25519);
    expect(decrypted.senderClaimedEd25519Key).toBe(alice.machine.identityKeys.ed25519);
    expect(decrypted.verificationState).toBe('unverified');
    // Bob never queried Alice's devices, and Alice has no cross-signing: red, unsigned device.
    expect(decrypted.senderDeviceVerified).toBeNull();
    expect(decrypted.shieldState).toMatchObject({ color: 'red', code: 'UnsignedDevice' });
    // Exactly these fields, and nothing else (a plain object, as a user would log or store it).
    expect(decrypted).toStrictEqual({
      event: expect.objectContaining({ type: 'm.room.message', room_id: ROOM, content: { msgtype: 'm.text', body: 'hi bob' } }),
      sender: alice.userId,
      senderDevice: 'ALICE',
      senderCurve25519Key: alice.machine.identityKeys.curve25519,
      senderClaimedEd25519Key: alice.machine.identityKeys.ed25519,
      forwarder: null,
      forwardingCurve25519KeyChain: [],
      sessionId: event.content.session_id,
      verificationState: 'unverified',
      senderDeviceVerified: null,
      shieldState: { color: 'red', code: 'UnsignedDevice', message: expect.any(String) },
      shieldStateStrict: { color: 'red', code: 'UnverifiedIdentity', message: expect.any(String) },
    });

    const reply = await bob.sendMessage(ROOM, members, { msgtype: 'm.text', body: 'hi alice' });
    await alice.sync();
    expect((await alice.machine.decryptRoomEvent(reply, ROOM)).event.content).toMatchObject({ body: 'hi alice' });
  });

  it('reports the sender device as verified once we verify it locally', async () => {
    const { alice, bob } = await pair();
    const event = await alice.sendMessage(ROOM, [alice.userId, bob.userId]);
    await bob.sync();
    await bob.machine.updateTrackedUsers([alice.userId]);
    await bob.flush();
    const before = await bob.machine.decryptRoomEvent(event, ROOM);
    expect(before.senderDeviceVerified).toBe(false);
    expect(before.shieldState).toMatchObject({ color: 'red', code: 'UnsignedDevice' });
    await bob.machine.setLocalTrust(alice.userId, 'ALICE', 'verified');
    expect((await bob.machine.getDevice(alice.userId, 'ALICE'))?.localTrust).toBe('verified');
    expect((await bob.machine.decryptRoomEvent(event, ROOM)).senderDeviceVerified).toBe(true);
  });

  it('rotates after the configured number of messages, and on discard', async () => {
    const { alice, bob } = await pair();
    const members = [alice.userId, bob.userId];
    const first = await alice.sendMessage(ROOM, members, { body: '1' }, { rotationPeriodMessages: 1 });
    const second = await alice.sendMessage(ROOM, members, { body: '2' }, { rotationPeriodMessages: 1 });
    expect(second.content.session_id).not.toBe(first.content.session_id);

    expect(await alice.machine.discardRoomKey(ROOM)).toBe(true);
    const third = await alice.sendMessage(ROOM, members, { body: '3' });
    expect(third.content.session_id).not.toBe(second.content.session_id);

    await bob.sync();
    for (const [e, body] of [[first, '1'], [second, '2'], [third, '3']] as const) {
      expect((await bob.machine.decryptRoomEvent(e, ROOM)).event.content).toMatchObject({ body });
    }
  });

  it('rejects encrypting with a due or missing room key as a typed error naming roomId', async () => {
    const { alice, bob } = await pair();
    const members = [alice.userId, bob.userId];
    const none = await alice.machine.encryptRoomEvent('!other:example.org', 'm.room.message', { body: 'x' }).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(MatrixCryptoError);
    expect(none).toMatchObject({ code: 'EncryptionError', field: 'roomId' });
    expect((none as Error).message).toMatch(/no room key exists .*shareRoomKey/);

    await alice.sendMessage(ROOM, members, { body: '1' }, { rotationPeriodMessages: 1 });
    const due = await alice.machine.encryptRoomEvent(ROOM, 'm.room.message', { body: '2' }).catch((e: unknown) => e);
    expect(due).toMatchObject({ code: 'EncryptionError', field: 'roomId' });
    expect((due as Error).message).toMatch(/rotation period.*shareRoomKey/);

    // The machine still works: sharing rotates the key and the next message goes out.
    const next = await alice.sendMessage(ROOM, members, { body: '2' }, { rotationPeriodMessages: 1 });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(next, ROOM)).event.content).toMatchObject({ body: '2' });
  });

  it('keeps the same session while no rotation is due', async () => {
    const { alice, bob } = await pair();
    const members = [alice.userId, bob.userId];
    const a = await alice.sendMessage(ROOM, members);
    const again = await alice.prepareRoom(ROOM, members);
    expect(again.requests).toEqual([]);
    expect(again.sharedWith).toEqual([]);
    const b = await alice.encrypt(ROOM);
    expect(b.content.session_id).toBe(a.content.session_id);
  });

  it('fails to decrypt with MissingRoomKey before the key arrives, then succeeds', async () => {
    const { alice, bob } = await pair();
    const event = await alice.sendMessage(ROOM, [alice.userId, bob.userId]);
    const err = await bob.machine.decryptRoomEvent(event, ROOM).catch((e) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.sessionId).toBe(event.content.session_id);
    await bob.sync();
    await expect(bob.machine.decryptRoomEvent(event, ROOM)).resolves.toBeTruthy();
  });

  it('exports and imports room keys with counts', async () => {
    const { hs, alice, bob } = await pair();
    const event = await alice.sendMessage(ROOM, [alice.userId, bob.userId]);
    await bob.sync();
    const exported = await bob.machine.exportRoomKeys({ roomId: ROOM });
    expect(exported).toHaveLength(1);
    expect(exported[0]).toMatchObject({ room_id: ROOM, session_id: event.content.session_id });
    expect(await bob.machine.exportRoomKeys({ roomId: '!other:example.org' })).toEqual([]);

    const carol = await TestDevice.create(hs, '@carol:example.org', 'CAROL');
    const result = await carol.machine.importRoomKeys(exported);
    expect(result).toMatchObject({ imported: 1, total: 1 });
    expect((await carol.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'hello' });
    expect(await carol.machine.importRoomKeys(JSON.stringify(exported))).toMatchObject({ imported: 0, total: 1 });
  });

  it('bootstraps cross-signing and reports its status', async () => {
    const { alice } = await pair();
    expect(await alice.machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    const requests = await alice.machine.bootstrapCrossSigning(true);
    expect(JSON.parse(requests.uploadSigningKeys.body)).toHaveProperty('master_key');
    expect(await alice.machine.crossSigningStatus()).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    const response = alice.hs.handle(alice.userId, alice.deviceId, requests.uploadSigningKeys);
    await alice.machine.markRequestAsSent(requests.uploadSigningKeys, response);
    await alice.send(requests.uploadSignatures);
  });

  it('lists a user\'s devices with their keys', async () => {
    const { alice, bob } = await pair();
    await alice.machine.updateTrackedUsers([bob.userId]);
    await alice.flush();
    const devices = await alice.machine.getUserDevices(bob.userId);
    expect(devices).toHaveLength(1);
    expect(devices[0]).toMatchObject({
      userId: bob.userId,
      deviceId: 'BOB',
      curve25519Key: bob.machine.identityKeys.curve25519,
      localTrust: 'unset',
      isBlacklisted: false,
    });
    expect(await alice.machine.getDevice(bob.userId, 'NOPE')).toBeNull();
  });
});
