// Room-key bundles (MSC4268): the withheld entries of a bundle as typed records, explanations of
// decryption failures with them, and the spoofing rules.
import { describe, expect, it } from 'vitest';
import { DecryptionError, MatrixCryptoError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { compatAttachmentEncrypt } from '../native/index';

const ROOM = '!history:example.org';

/** The media repository: uploads by URI. */
const media = new Map<string, Uint8Array>();
function upload(bytes: Uint8Array): string {
  const url = `mxc://example.org/bundle${media.size + 1}`;
  media.set(url, bytes);
  return url;
}

async function publish(d: TestDevice): Promise<void> {
  const boot = await d.machine.bootstrapCrossSigning(false);
  await d.machine.markRequestAsSent(boot.uploadSigningKeys, d.hs.handle(d.userId, d.deviceId, boot.uploadSigningKeys));
  await d.send(boot.uploadSignatures);
}

/**
 * Alice (the inviter) and Bob (the invitee), both cross-signed, knowing each other. With
 * `bobKnowsAlicesIdentity: false`, Bob queried Alice's device before she published her
 * cross-signing keys and never hears of them: to him her device is not cross-signed.
 */
async function setUp(options: { bobKnowsAlicesIdentity?: boolean } = {}) {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  const knows = options.bobKnowsAlicesIdentity ?? true;
  if (knows) await publish(alice);
  await publish(bob);
  for (const [me, other] of [[alice, bob], [bob, alice]] as const) {
    await me.machine.updateTrackedUsers([other.userId]);
    await me.flush();
  }
  if (!knows) {
    await publish(alice);
    hs.changed.get(`${bob.userId}|${bob.deviceId}`)!.delete(alice.userId);
  }
  return { hs, alice, bob };
}

/** Upload a bundle file and send its `m.room_key_bundle` event from `from` to `to`; `to` syncs. */
async function announce(from: TestDevice, to: TestDevice, ciphertext: Uint8Array, mediaEncryptionInfo: string): Promise<void> {
  const url = upload(ciphertext);
  const claim = await from.machine.getMissingSessions([to.userId]);
  if (claim) await from.send(claim);
  for (const r of await from.machine.shareRoomKeyBundle(to.userId, ROOM, url, mediaEncryptionInfo)) await from.send(r);
  await to.sync();
}

/** A hand-made bundle file, encrypted as a client would (any JSON the sharer chooses). */
function handMade(bundle: unknown): { ciphertext: Uint8Array; info: string } {
  const encrypted = compatAttachmentEncrypt(Buffer.from(JSON.stringify(bundle)));
  return { ciphertext: new Uint8Array(encrypted.data), info: encrypted.mediaEncryptionInfo };
}

async function receive(bob: TestDevice, inviter: string) {
  const announced = await bob.machine.getReceivedRoomKeyBundle(ROOM, inviter);
  expect(announced).not.toBeNull();
  return bob.machine.receiveRoomKeyBundle(ROOM, inviter, media.get(announced!.url)!);
}

async function decryptError(d: TestDevice, event: object): Promise<DecryptionError> {
  const err = await d.machine.decryptRoomEvent(event as never, ROOM).catch((e) => e);
  expect(err).toBeInstanceOf(DecryptionError);
  return err as DecryptionError;
}

describe('room-key bundles (MSC4268)', () => {
  it("the inviter's bundle: shared sessions decrypt, the others fail with m.history_not_shared and the bundle's reason", async () => {
    const { alice, bob } = await setUp();
    const aliceKey = alice.machine.identityKeys.curve25519;
    const shared = await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'shared history' }, { historyVisibility: 'shared' });
    await alice.machine.discardRoomKey(ROOM);
    const joined = await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'members only' }, { historyVisibility: 'joined' });

    const built = await alice.machine.buildRoomKeyBundle(ROOM);
    expect(built).toMatchObject({ roomKeys: 1, withheld: 1 });
    expect(await alice.machine.buildRoomKeyBundle('!empty:example.org')).toBeNull();
    expect((await decryptError(bob, joined)).withheld).toBeNull();

    await announce(alice, bob, built!.ciphertext, built!.mediaEncryptionInfo);
    const announced = await bob.machine.getReceivedRoomKeyBundle(ROOM, alice.userId);
    expect(announced).toStrictEqual({ roomId: ROOM, sender: alice.userId, senderKey: aliceKey, url: expect.stringMatching(/^mxc:\/\//) });
    const progress: Array<[number, number]> = [];
    const result = await bob.machine.receiveRoomKeyBundle(ROOM, alice.userId, media.get(announced!.url)!, {
      onProgress: (done, total) => progress.push([done, total]),
    });
    expect(result).toStrictEqual({
      roomId: ROOM,
      sender: alice.userId,
      senderKey: aliceKey,
      senderDevice: 'ALICE',
      sharerTrusted: true,
      roomKeys: 1,
      imported: 1,
      otherRoomKeys: 0,
      invalidRoomKeys: 0,
      withheld: [expect.any(Object)],
      malformed: 0,
    });
    expect(result.withheld).toStrictEqual([
      {
        kind: 'room',
        code: 'm.history_not_shared',
        reason: expect.any(String),
        roomId: ROOM,
        sessionId: joined.content.session_id,
        sender: alice.userId,
        senderKey: aliceKey,
        fromDevice: 'ALICE',
        receivedAt: expect.any(Number),
        verdict: 'trusted',
        source: 'key_bundle',
      },
    ]);
    expect(progress.at(-1)).toEqual([1, 1]);

    expect((await bob.machine.decryptRoomEvent(shared, ROOM)).event.content).toMatchObject({ body: 'shared history' });
    const err = await decryptError(bob, joined);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toEqual({ code: 'm.history_not_shared', reason: result.withheld[0].reason, scope: 'session' });
    expect(err.message).toContain('m.history_not_shared');
    expect(await bob.machine.getWithheldRecords(ROOM, joined.content.session_id as string)).toEqual([
      expect.objectContaining({ code: 'm.history_not_shared', source: 'key_bundle', sender: alice.userId, fromDevice: 'ALICE' }),
    ]);
    expect(bob.machine.withheldMetrics().acceptedNotices).toBe(1);
  });

  it('keeps a reason and custom codes; refuses entries that contradict what we know, and never explains with them', async () => {
    const { hs, alice, bob } = await setUp();
    const carol = await TestDevice.create(hs, '@carol:example.org', 'CAROL');
    await bob.machine.updateTrackedUsers([carol.userId]);
    await bob.flush();
    const [aliceKey, bobKey, carolKey] = [alice, bob, carol].map((d) => d.machine.identityKeys.curve25519);
    // Bob holds one of Alice's sessions; another of hers he lacks.
    const held = await alice.sendMessage(ROOM, [alice.userId, bob.userId], { msgtype: 'm.text', body: 'held' });
    await bob.sync();
    await alice.machine.discardRoomKey(ROOM);
    const missing = await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'missing' });
    const entry = (sessionId: string, senderKey: string, extra: Record<string, unknown> = {}) => ({
      algorithm: 'm.megolm.v1.aes-sha2', code: 'm.history_not_shared', room_id: ROOM, session_id: sessionId, sender_key: senderKey, ...extra,
    });
    const file = handMade({
      room_keys: [{ algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: 'NOKEY' }],
      withheld: [
        entry(missing.content.session_id as string, aliceKey, { from_device: 'ALICE', reason: 'Alice keeps this one' }),
        entry('CAROLS', carolKey, { from_device: 'ALICE', code: 'com.example.retention', reason: 'expired' }),
        entry('ELSEWHERE', aliceKey, { room_id: '!other:example.org' }),
        entry(held.content.session_id as string, carolKey, { reason: 'not the creator of a session Bob holds' }),
        entry('WRONGDEVICE', aliceKey, { from_device: 'NOT_ALICE' }),
        { code: 'm.no_olm', sender_key: aliceKey },
        'not an object',
      ],
    });
    await announce(alice, bob, file.ciphertext, file.info);
    const result = await receive(bob, alice.userId);
    expect(result).toMatchObject({ malformed: 2, invalidRoomKeys: 1, roomKeys: 0, imported: 0 });
    expect(result.withheld.map((e) => [e.sessionId, e.code, e.reason, e.verdict])).toEqual([
      [missing.content.session_id, 'm.history_not_shared', 'Alice keeps this one', 'trusted'],
      ['CAROLS', 'com.example.retention', 'expired', 'trusted'],
      ['ELSEWHERE', 'm.history_not_shared', null, 'spoofed'],
      [held.content.session_id, 'm.history_not_shared', 'not the creator of a session Bob holds', 'spoofed'],
      ['WRONGDEVICE', 'm.history_not_shared', null, 'spoofed'],
    ]);
    expect(bob.machine.withheldMetrics()).toMatchObject({ acceptedNotices: 2, spoofedNotices: 3, malformedNotices: 2 });
    expect(await bob.machine.getWithheldRecords(ROOM, held.content.session_id as string)).toEqual([]);
    expect(await bob.machine.getWithheldRecords(ROOM, 'WRONGDEVICE')).toEqual([]);
    expect((await decryptError(bob, missing)).withheld).toEqual({ code: 'm.history_not_shared', reason: 'Alice keeps this one', scope: 'session' });
    expect((await bob.machine.decryptRoomEvent(held, ROOM)).event.content).toMatchObject({ body: 'held' });

    // A later bundle that claims Bob's own key for Alice's missing session replaces the record
    // (one per sharer and source), but cannot explain Alice's message: the key is not hers.
    const forged = handMade({ room_keys: [], withheld: [entry(missing.content.session_id as string, bobKey, { reason: 'forged' })] });
    await announce(alice, bob, forged.ciphertext, forged.info);
    expect((await receive(bob, alice.userId)).withheld[0]).toMatchObject({ verdict: 'trusted', reason: 'forged' });
    expect((await decryptError(bob, missing)).withheld).toBeNull();
  });

  it("a sharer whose device is not cross-signed: the crate imports nothing, and nothing of the bundle's withheld list is kept", async () => {
    const { alice, bob } = await setUp({ bobKnowsAlicesIdentity: false });
    await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'shared' }, { historyVisibility: 'shared' });
    await alice.machine.discardRoomKey(ROOM);
    const joined = await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'joined' }, { historyVisibility: 'joined' });
    const built = await alice.machine.buildRoomKeyBundle(ROOM);
    await announce(alice, bob, built!.ciphertext, built!.mediaEncryptionInfo);
    const result = await receive(bob, alice.userId);
    expect(result).toMatchObject({ sharerTrusted: false, roomKeys: 1, imported: 0 });
    expect(result.withheld.map((e) => e.verdict)).toEqual(['unconfirmed']);
    expect(await bob.machine.getWithheldRecords(ROOM, joined.content.session_id as string)).toEqual([]);
    expect((await decryptError(bob, joined)).withheld).toBeNull();
  });

  it('names the bad argument: no bundle announced, a file that does not decrypt, a bad URI or encryption info', async () => {
    const { alice, bob } = await setUp();
    await alice.sendMessage(ROOM, [alice.userId], { msgtype: 'm.text', body: 'x' }, { historyVisibility: 'shared' });
    const built = (await alice.machine.buildRoomKeyBundle(ROOM))!;
    const refused = (p: Promise<unknown>) => p.then(() => null, (e: MatrixCryptoError) => [e.code, e.field, e.message]);
    expect(await refused(bob.machine.receiveRoomKeyBundle(ROOM, alice.userId, built.ciphertext))).toEqual([
      'InvalidArgument', 'inviterUserId', expect.stringContaining('no m.room_key_bundle event from @alice:example.org'),
    ]);
    expect(await refused(alice.machine.shareRoomKeyBundle(bob.userId, ROOM, 'https://example.org/x', built.mediaEncryptionInfo))).toEqual([
      'InvalidArgument', 'url', expect.stringContaining('mxc://'),
    ]);
    expect(await refused(alice.machine.shareRoomKeyBundle(bob.userId, ROOM, 'mxc://example.org/x', '{"key":1}'))).toEqual([
      'InvalidArgument', 'mediaEncryptionInfo', expect.stringContaining('mediaEncryptionInfo'),
    ]);
    await announce(alice, bob, built.ciphertext, built.mediaEncryptionInfo);
    const tampered = new Uint8Array(built.ciphertext);
    tampered[0] ^= 1;
    expect(await refused(bob.machine.receiveRoomKeyBundle(ROOM, alice.userId, tampered))).toEqual([
      'InvalidArgument', 'encryptedBundle', expect.stringContaining('does not decrypt'),
    ]);
    const notABundle = compatAttachmentEncrypt(Buffer.from('[1, 2]'));
    await announce(alice, bob, new Uint8Array(notABundle.data), notABundle.mediaEncryptionInfo);
    expect(await refused(receive(bob, alice.userId))).toEqual(['InvalidArgument', 'encryptedBundle', expect.stringContaining('not a room-key bundle')]);
    expect(await refused(bob.machine.receiveRoomKeyBundle(ROOM, alice.userId, 'bytes' as never))).toEqual([
      'InvalidArgument', 'encryptedBundle', expect.stringContaining('Uint8Array'),
    ]);
  });
});
