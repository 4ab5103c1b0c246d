import { describe, it, expect } from 'vitest';
import { randomUUID } from 'node:crypto';
import { DecryptionError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { ALICE, BOB, ROOM, secondDeviceJoins } from './helpers/second-device';
import { sendToDevice } from './helpers/to-device';

const MALLORY = '@mallory:example.org';

function request(hs: TestHomeserver, from: { userId: string; deviceId: string }, to: string, body: object, action = 'request', requestId = randomUUID()) {
  sendToDevice(hs, from, 'm.room_key_request', {
    [to]: { '*': { action, requesting_device_id: from.deviceId, request_id: requestId, ...(action === 'request' ? { body } : {}) } },
  });
  return requestId;
}

/** Mallory's device M, known to A1 (a device we do not know gets no answer at all). */
async function knownMallory(hs: TestHomeserver, a1: TestDevice) {
  await TestDevice.create(hs, MALLORY, 'M');
  await a1.machine.updateTrackedUsers([MALLORY]);
  await a1.flush();
}

describe('answers to room-key requests', () => {
  it('forwards the session to our own verified device, which then decrypts', async () => {
    const { a1, a2, event } = await secondDeviceJoins();
    const err = await a2.machine.decryptRoomEvent(event, ROOM).catch((e) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    await a2.flush(); // the crate's automatic key request to our verified devices

    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers).toEqual([
      expect.objectContaining({ sender: ALICE, requestingDevice: 'A2', sessionId: event.content.session_id, answer: 'forwarded', sent: true }),
    ]);
    const sync = await a2.sync();
    expect(sync.roomKeyUpdates.map((k) => k.sessionId)).toContain(event.content.session_id);
    const decrypted = await a2.machine.decryptRoomEvent(event, ROOM);
    expect(decrypted.event.content).toMatchObject({ body: 'secret' });
    expect(decrypted.forwardingCurve25519KeyChain).toEqual([a1.machine.identityKeys.curve25519]);
    expect((await a1.machine.decryptRoomEvent(event, ROOM)).forwardingCurve25519KeyChain).toEqual([]);
  });

  it('refuses our own unverified device with m.unverified', async () => {
    const { hs, a1, a2, event } = await secondDeviceJoins({ verifyA2: false });
    await a2.machine.decryptRoomEvent(event, ROOM).catch(() => undefined);
    await a2.flush();
    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers).toEqual([expect.objectContaining({ requestingDevice: 'A2', answer: 'm.unverified', sent: true })]);
    const { withheldNotices } = await a2.sync();
    expect(withheldNotices).toEqual([
      expect.objectContaining({ kind: 'room', code: 'm.unverified', sender: ALICE, fromDevice: 'A1', sessionId: event.content.session_id, verdict: 'key_request_answer' }),
    ]);
    expect(hs.sentTo(ALICE, 'A2', 'm.room.encrypted')).toHaveLength(0);
  });

  it('refuses other users with m.unauthorised, and answers m.unavailable for sessions we lack', async () => {
    const { hs, a1, event } = await secondDeviceJoins();
    const mallory = await TestDevice.create(hs, MALLORY, 'M');
    await a1.machine.updateTrackedUsers([MALLORY]);
    await a1.flush();
    const body = { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: event.content.session_id };
    request(hs, mallory, ALICE, body);
    request(hs, { userId: ALICE, deviceId: 'A2' }, ALICE, { ...body, session_id: 'not-a-session-we-have' });
    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers.map((a) => [a.sender, a.answer])).toEqual([
      [MALLORY, 'm.unauthorised'],
      [ALICE, 'm.unavailable'],
    ]);
    expect(hs.sentTo(MALLORY, 'M', 'm.room_key.withheld')[0].content).toMatchObject({
      code: 'm.unauthorised',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: a1.machine.identityKeys.curve25519,
    });
    expect(hs.sentTo(MALLORY, 'M', 'm.room.encrypted')).toHaveLength(0);
  });

  it("gets no answer for another user's device we do not know (never published)", async () => {
    const { hs, a1, event } = await secondDeviceJoins();
    request(hs, { userId: MALLORY, deviceId: 'NEVER_PUBLISHED' }, ALICE, { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: event.content.session_id });
    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers).toEqual([expect.objectContaining({ requestingDevice: 'NEVER_PUBLISHED', answer: 'ignored', sent: false })]);
    expect(hs.sentTo(MALLORY, 'NEVER_PUBLISHED')).toHaveLength(0);
  });

  it('follows the policy: refusals suppressed under send: none', async () => {
    const { hs, a1, event } = await secondDeviceJoins();
    await knownMallory(hs, a1);
    a1.machine.setWithheldPolicy({ send: 'none' });
    request(hs, { userId: MALLORY, deviceId: 'M' }, ALICE, { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: event.content.session_id });
    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers).toEqual([expect.objectContaining({ answer: 'm.unauthorised', sent: false })]);
    expect(hs.sentTo(MALLORY, 'M')).toHaveLength(0);
  });

  it('a cancellation in the same batch withdraws the answer', async () => {
    const { hs, a1, event } = await secondDeviceJoins();
    const body = { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: event.content.session_id };
    const id = request(hs, { userId: MALLORY, deviceId: 'M' }, ALICE, body);
    request(hs, { userId: MALLORY, deviceId: 'M' }, ALICE, body, 'request_cancellation', id);
    expect((await a1.sync()).keyRequestAnswers).toEqual([]);
    expect(hs.sentTo(MALLORY, 'M')).toHaveLength(0);
  });

  it('a flood of thousands of requests produces bounded output', async () => {
    const { hs, a1 } = await secondDeviceJoins();
    await knownMallory(hs, a1);
    for (let i = 0; i < 3_000; i++) {
      request(hs, { userId: MALLORY, deviceId: 'M' }, ALICE, { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: `s${i % 1_500}` });
    }
    const { keyRequestAnswers } = await a1.sync();
    expect(keyRequestAnswers).toHaveLength(3_000);
    const sent = keyRequestAnswers.filter((a) => a.sent).length;
    expect(sent).toBe(50);
    expect(a1.machine.withheldMetrics().rateLimitedKeyRequests).toBe(2_950);
    expect(hs.sentTo(MALLORY, 'M', 'm.room_key.withheld')).toHaveLength(50);
    // The same session asked again right away gets no second answer.
    request(hs, { userId: MALLORY, deviceId: 'M' }, ALICE, { algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, session_id: 's0' });
    expect((await a1.sync()).keyRequestAnswers).toEqual([expect.objectContaining({ answer: 'rate_limited', sent: false })]);
  });
});

describe('withheld in forwarded keys', () => {
  it('a partially withheld session forwarded to our other device carries withheld, which explains the early messages', async () => {
    const hs = new TestHomeserver();
    const a1 = await TestDevice.create(hs, ALICE, 'A1');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.machine.updateTrackedUsers([ALICE]);
    await bob.flush();
    const trusted = { sharingStrategy: 'only_trusted_devices' as const };
    bob.machine.setWithheldPolicy({ reasons: { 'm.unverified': 'Bob verifies devices by hand.' } });
    const early = await bob.sendMessage(ROOM, [ALICE, BOB], { body: 'early' }, trusted);
    await bob.machine.setLocalTrust(ALICE, 'A1', 'verified');
    const late = await bob.sendMessage(ROOM, [ALICE, BOB], { body: 'late' }, trusted);
    await a1.sync();
    expect((await a1.machine.decryptRoomEvent(late, ROOM)).event.content).toMatchObject({ body: 'late' });

    const a2 = await TestDevice.create(hs, ALICE, 'A2');
    for (const d of [a1, a2]) {
      await d.machine.updateTrackedUsers([ALICE, BOB]);
      await d.sync();
    }
    await a2.machine.setLocalTrust(ALICE, 'A1', 'verified');
    await a1.machine.setLocalTrust(ALICE, 'A2', 'verified');
    await a2.machine.decryptRoomEvent(late, ROOM).catch(() => undefined);
    await a2.flush();
    expect((await a1.sync()).keyRequestAnswers.map((a) => a.answer)).toEqual(['forwarded']);
    await a2.sync();

    expect((await a2.machine.decryptRoomEvent(late, ROOM)).event.content).toMatchObject({ body: 'late' });
    expect(await a2.machine.getWithheldRecords(ROOM, String(early.content.session_id))).toEqual([
      expect.objectContaining({ code: 'm.unverified', reason: 'Bob verifies devices by hand.', source: 'forwarded_key' }),
    ]);
    const err = await a2.machine.decryptRoomEvent(early, ROOM).catch((e) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    expect(err.code).toBe('UnknownMessageIndex');
    expect(err.withheld).toEqual({ code: 'm.unverified', reason: 'Bob verifies devices by hand.', scope: 'before_first_index' });
  });
});
