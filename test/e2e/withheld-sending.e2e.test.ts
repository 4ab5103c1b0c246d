// Withheld notices we send, as independent recipients see them on Synapse:
// scenario 3 (only trusted devices: the js-sdk client reports the key withheld for its unverified
// device) and scenario 4 (m.no_olm once per device, re-armed after an Olm session).
import { describe, expect, it } from 'vitest';
import { DecryptionFailureCode } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { EncryptedClient } from '../../src/client';
import { useHomeserver, useParticipants } from './harness';
import { waitFor, type JsSdkUser } from './js-sdk-user';
import { RawDevice } from './raw-device';

const { hs, logs } = useHomeserver();
const { jsUser, bot } = useParticipants(hs, logs);

const ENCRYPTION = { type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } };

/** The bot creates an encrypted room and the js-sdk user joins it. */
async function roomWith(b: EncryptedClient, alice: JsSdkUser): Promise<string> {
  const { room_id } = await b.transport.createRoom({ preset: 'private_chat', invite: [alice.user.userId], initial_state: [ENCRYPTION] });
  await alice.joinRoom(room_id);
  return room_id;
}

const text = (body: string) => ({ msgtype: 'm.text', body });
const trustedOnly = { shareSettings: { sharingStrategy: 'only_trusted_devices' as const } };

describe('scenario 3: we share only with trusted devices', () => {
  // alice's device is cross-signed by her own identity, but the bot never verified that identity:
  // to the bot the device is not trusted.
  it('the js-sdk client reports the key as withheld for its unverified device', async () => {
    const [alice, b] = await Promise.all([jsUser('alice3'), bot('bot3')]);
    const roomId = await roomWith(b, alice);
    const aliceDevice = { userId: alice.user.userId, deviceId: alice.user.deviceId };

    const m1 = await b.sendEncrypted(roomId, 'm.room.message', text('for verified devices only'), trustedOnly);
    expect(m1.share.sharedWith).not.toContainEqual(aliceDevice);
    expect(m1.share.withheld).toContainEqual({ ...aliceDevice, code: 'm.unverified', sent: true });
    const failed = await alice.waitForFailure(roomId, m1.eventId, DecryptionFailureCode.MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE);
    expect(failed.isDecryptionFailure()).toBe(true);

    // Once we verify the device it gets the session from the current index on: the next message
    // decrypts, the first one stays withheld.
    await b.machine.setLocalTrust(alice.user.userId, alice.user.deviceId, 'verified');
    const m2 = await b.sendEncrypted(roomId, 'm.room.message', text('now you can read this'), trustedOnly);
    expect(m2.share.sharedWith).toContainEqual(aliceDevice);
    expect((await alice.waitForDecrypted(roomId, m2.eventId)).content.body).toBe('now you can read this');
    await alice.waitForFailure(roomId, m1.eventId, DecryptionFailureCode.MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE);
  });

  it('with notices turned off by policy, the js-sdk client only sees a missing key', async () => {
    const [alice, b] = await Promise.all([jsUser('alice3b'), bot('bot3b', { withheld: { send: 'none' } })]);
    const roomId = await roomWith(b, alice);
    const aliceDevice = { userId: alice.user.userId, deviceId: alice.user.deviceId };

    const m1 = await b.sendEncrypted(roomId, 'm.room.message', text('silently withheld'), trustedOnly);
    expect(m1.share.withheld).toContainEqual({ ...aliceDevice, code: 'm.unverified', sent: false });
    await alice.waitForFailure(roomId, m1.eventId, DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID);
    // A later event the client does receive: a notice sent before it would have arrived by now.
    const { event_id: marker } = await b.transport.sendRoomEvent(roomId, 'org.example.marker', {});
    await waitFor('the marker event at alice', () => alice.findEvent(roomId, marker));
    expect(alice.findEvent(roomId, m1.eventId)?.decryptionFailureReason).toBe(DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID);
  });
});

describe('scenario 4: m.no_olm for a device whose one-time keys ran out', () => {
  it('sends one notice, none on the next messages, and re-arms after an Olm session', async () => {
    const b = await bot('bot4');
    const carol = new RawDevice(hs().baseUrl, await hs().registerUser('carol4'));
    const dave = await hs().registerUser('dave4');
    const carolDevice = { userId: carol.user.userId, deviceId: carol.user.deviceId };

    // carol publishes one one-time key and no fallback key; someone else claims it.
    await carol.uploadDeviceKeys();
    expect(await carol.uploadOneTimeKeys(1)).toBe(1);
    const { room_id: roomId } = await b.transport.createRoom({ preset: 'private_chat', invite: [carol.user.userId], initial_state: [ENCRYPTION] });
    await carol.transport.joinRoom(roomId);
    await carol.sync();
    const daveT = new RawDevice(hs().baseUrl, dave).transport;
    const claimed = JSON.parse(
      await daveT.send({
        type: 'keys_claim',
        id: 'dave-claim',
        body: JSON.stringify({ one_time_keys: { [carol.user.userId]: { [carol.user.deviceId]: 'signed_curve25519' } } }),
      }),
    ) as { one_time_keys: Record<string, Record<string, Record<string, unknown>>> };
    expect(Object.keys(claimed.one_time_keys[carol.user.userId]?.[carol.user.deviceId] ?? {})).toHaveLength(1);

    /** carol syncs until she has seen the room event (to-device messages sent before it are in by then). */
    const carolSees = async (eventId: string): Promise<void> => {
      await waitFor(`carol to see ${eventId}`, async () => {
        await carol.sync(200);
        return carol.timeline.some((e) => e.event_id === eventId) ? true : undefined;
      });
      await carol.sync();
    };
    const noOlm = () => carol.withheldNotices().filter((e) => e.content.code === 'm.no_olm');

    // First message: carol gets exactly one m.no_olm, covering every session of the bot's device.
    const m1 = await b.sendEncrypted(roomId, 'm.room.message', text('one'));
    expect(m1.share.sharedWith).not.toContainEqual(carolDevice);
    expect(m1.share.withheld).toContainEqual({ ...carolDevice, code: 'm.no_olm', sent: true });
    await carolSees(m1.eventId);
    expect(noOlm()).toHaveLength(1);
    const notice = noOlm()[0]!;
    expect(notice.sender).toBe(b.userId);
    expect(notice.content).toMatchObject({ code: 'm.no_olm', algorithm: 'm.megolm.v1.aes-sha2', sender_key: b.machine.identityKeys.curve25519 });
    expect(notice.content).not.toHaveProperty('room_id');
    expect(notice.content).not.toHaveProperty('session_id');
    const state = await b.machine.getNoOlmState(carol.user.userId, carol.user.deviceId);
    expect(state).toMatchObject({ suppressed: false, rearmed: false });

    // Next message in the same session, and one in a new session: no second notice.
    const m2 = await b.sendEncrypted(roomId, 'm.room.message', text('two'));
    await b.machine.discardRoomKey(roomId);
    const m3 = await b.sendEncrypted(roomId, 'm.room.message', text('three, new session'));
    for (const m of [m2, m3]) expect(m.share.withheld.filter((w) => w.deviceId === carol.user.deviceId && w.sent)).toEqual([]);
    await carolSees(m3.eventId);
    expect(noOlm()).toHaveLength(1);

    // carol uploads a key again. The bot's machine backs off from devices whose claim failed, so
    // keep preparing the room until the claim is retried and an Olm session is made.
    expect(await carol.uploadOneTimeKeys(1)).toBe(1);
    await waitFor(
      'an Olm session with carol',
      async () => ((await b.prepareRoomForSending(roomId)).sharedWith.some((d) => d.deviceId === carol.user.deviceId) ? true : undefined),
      60_000,
    );
    expect(await b.machine.getNoOlmState(carol.user.userId, carol.user.deviceId)).toMatchObject({ rearmed: true });
    const m4 = await b.sendEncrypted(roomId, 'm.room.message', text('four'));
    await carolSees(m4.eventId);
    // The room key reached carol in an Olm pre-key message made from her new one-time key.
    const olm = carol.toDevice.filter((e) => e.type === 'm.room.encrypted' && e.sender === b.userId);
    expect(olm.length).toBeGreaterThan(0);
    expect((olm[0]!.content.ciphertext as Record<string, { type: number }>)[carol.curve25519]?.type).toBe(0);
    expect(noOlm()).toHaveLength(1);
  }, 120_000);
});
