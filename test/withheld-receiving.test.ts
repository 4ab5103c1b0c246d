import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine, type WithheldNotice } from '../src/index';
import { ALICE, BOB, MALLORY, ROOM, decryptError, noticeRecipient, sendNotice } from './helpers/notice-recipient';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('received withheld notices', () => {
  it('are typed, keep their reason, reach subscribers, and persist across a restart', async () => {
    const path = mkdtempSync(join(tmpdir(), 'mcn-recv-'));
    dirs.push(path);
    const { alice, bob } = await noticeRecipient({ kind: 'sqlite', path });
    const seen: WithheldNotice[] = [];
    const stop = bob.machine.on('withheld', (n) => seen.push(n));

    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    alice.machine.setWithheldPolicy({ reasons: { 'm.blacklisted': 'Not in this room, sorry.' } });
    const event = await alice.sendMessage(ROOM, [ALICE, BOB]);

    const { withheldNotices } = await bob.sync();
    const expected = {
      kind: 'room',
      code: 'm.blacklisted',
      reason: 'Not in this room, sorry.',
      roomId: ROOM,
      sessionId: event.content.session_id,
      sender: ALICE,
      senderKey: alice.machine.identityKeys.curve25519,
      fromDevice: 'ALICE',
      verdict: 'trusted',
      encrypted: false,
    };
    expect(withheldNotices).toEqual([expect.objectContaining(expected)]);
    expect(seen).toEqual(withheldNotices);
    stop();

    const err = await decryptError(bob, event);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toEqual({ code: 'm.blacklisted', reason: 'Not in this room, sorry.', scope: 'session' });
    expect(err.withheldCode).toBe('m.blacklisted');

    await bob.machine.close();
    bob.machine = await OlmMachine.open({ userId: BOB, deviceId: 'BOB', store: { kind: 'sqlite', path } });
    expect(await bob.machine.getWithheldRecords(ROOM, String(event.content.session_id))).toEqual([
      expect.objectContaining({ code: 'm.blacklisted', reason: 'Not in this room, sorry.', source: 'notice', sender: ALICE }),
    ]);
    expect((await decryptError(bob, event)).withheld?.scope).toBe('session');
    await bob.machine.close();
  });

  it('a message whose key has simply not arrived has no withheld explanation', async () => {
    const { alice, bob } = await noticeRecipient();
    const event = await alice.sendMessage(ROOM, [ALICE, BOB]);
    const err = await decryptError(bob, event);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toBeNull();
  });

  it('partially withheld: unverified, then verified, earlier messages report the notice (before_first_index)', async () => {
    const { alice, bob } = await noticeRecipient();
    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    const settings = { sharingStrategy: 'only_trusted_devices' as const };
    const early = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'before verification' }, settings);

    await alice.machine.setLocalTrust(BOB, 'BOB', 'verified');
    const late = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'after verification' }, settings);
    expect(late.content.session_id).toBe(early.content.session_id);

    const sync = await bob.sync();
    expect(sync.withheldNotices.map((n) => n.code)).toEqual(['m.unverified']);
    expect((await bob.machine.decryptRoomEvent(late, ROOM)).event.content).toMatchObject({ body: 'after verification' });
    const err = await decryptError(bob, early);
    expect(err.code).toBe('UnknownMessageIndex');
    expect(err.withheld).toMatchObject({ code: 'm.unverified', scope: 'before_first_index' });
  });

  it('a forged notice about someone else\'s session is ignored for explanations and counted', async () => {
    const { hs, alice, bob, mallory } = await noticeRecipient();
    const event = await alice.sendMessage(ROOM, [ALICE]); // Bob is not a recipient
    sendNotice(hs, mallory, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'm.blacklisted',
      reason: 'forged',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: alice.machine.identityKeys.curve25519,
    });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toEqual([expect.objectContaining({ sender: MALLORY, verdict: 'spoofed' })]);
    expect(bob.machine.withheldMetrics()).toMatchObject({ spoofedNotices: 1, acceptedNotices: 0 });
    expect((await decryptError(bob, event)).withheld).toBeNull();
    expect(await bob.machine.getWithheldRecords(ROOM, String(event.content.session_id))).toEqual([]);
  });

  it('a forged notice does not replace the creator\'s real one', async () => {
    const { hs, alice, bob, mallory } = await noticeRecipient();
    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    const event = await alice.sendMessage(ROOM, [ALICE, BOB]);
    sendNotice(hs, mallory, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'm.unauthorised',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: mallory.machine.identityKeys.curve25519,
    });
    await bob.sync();
    expect((await decryptError(bob, event)).withheld?.code).toBe('m.blacklisted');
  });

  it('keeps custom codes and their reasons', async () => {
    const { hs, alice, bob } = await noticeRecipient();
    const event = await alice.sendMessage(ROOM, [ALICE]);
    sendNotice(hs, alice, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'com.example.retention_policy',
      reason: 'This room does not share history with bots.',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: alice.machine.identityKeys.curve25519,
    });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices[0]).toMatchObject({ code: 'com.example.retention_policy', verdict: 'trusted' });
    expect((await decryptError(bob, event)).withheld).toEqual({
      code: 'com.example.retention_policy',
      reason: 'This room does not share history with bots.',
      scope: 'session',
    });
  });

  it('counts malformed notices and reports nothing for them', async () => {
    const { hs, alice, bob } = await noticeRecipient();
    sendNotice(hs, alice, { code: 'm.unverified', sender_key: alice.machine.identityKeys.curve25519 });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toEqual([]);
    expect(bob.machine.withheldMetrics().malformedNotices).toBe(1);
  });
});

describe('m.no_olm received', () => {
  it('explains messages the sender device sent before we got the notice', async () => {
    const { hs, alice, bob } = await noticeRecipient();
    hs.exhaustKeys(BOB, 'BOB');
    const event = await alice.sendMessage(ROOM, [ALICE, BOB]);
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toEqual([
      expect.objectContaining({ kind: 'no_olm', code: 'm.no_olm', sender: ALICE, fromDevice: 'ALICE', verdict: 'trusted' }),
    ]);
    expect(await bob.machine.getNoOlmNotices(ALICE, 'ALICE')).toHaveLength(1);
    const err = await decryptError(bob, event);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toMatchObject({ code: 'm.no_olm', scope: 'no_olm' });

    // A message sent long after the notice is not covered by it.
    const later = { ...event, origin_server_ts: Date.now() + 10 * 60_000 };
    expect((await decryptError(bob, later)).withheld).toBeNull();
  });
});
