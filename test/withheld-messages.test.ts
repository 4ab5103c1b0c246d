// What a decryption error says (its message, our log record) comes from our verdict, never from
// a notice the crate was tricked into believing.
import { afterEach, describe, expect, it } from 'vitest';
import { flushLogs, setLogger, type LogRecord } from '../src/index';
import { ALICE, BOB, ROOM, decryptError, noticeRecipient, sendNotice } from './helpers/notice-recipient';

afterEach(() => setLogger(null));

async function logged<T>(run: () => Promise<T>): Promise<{ result: T; records: LogRecord[] }> {
  const records: LogRecord[] = [];
  setLogger((r) => records.push(r), { level: 'warn' });
  const result = await run();
  await flushLogs();
  setLogger(null);
  return { result, records };
}

describe('decryption error messages', () => {
  it("never quote a forged code: a third user's notice claiming the creator's key", async () => {
    const { hs, alice, bob, mallory } = await noticeRecipient();
    const event = await alice.sendMessage(ROOM, [ALICE]); // Bob is not a recipient
    sendNotice(hs, mallory, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'm.blacklisted',
      reason: 'you are banned (forged)',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: alice.machine.identityKeys.curve25519,
    });
    await bob.sync();
    const { result: err, records } = await logged(() => decryptError(bob, event));
    expect(err.withheld).toBeNull();
    expect(err.code).toBe('MissingRoomKey');
    expect(err.message).toBe(`the room key for session ${event.content.session_id} is missing`);
    expect(err.message).not.toMatch(/blacklisted|forged/);
    const ours = records.filter((r) => r.target === 'matrix_crypto_node::decryption');
    expect(ours).toEqual([
      expect.objectContaining({ level: 'warn', message: err.message, fields: expect.objectContaining({ code: 'MissingRoomKey', withheld: 'none' }) }),
    ]);
  });

  it("state the creator's real code and reason when a forgery came too", async () => {
    const { hs, alice, bob, mallory } = await noticeRecipient();
    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'verified');
    const event = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'x' }, { sharingStrategy: 'only_trusted_devices' });
    await bob.sync();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'unset');
    await alice.machine.discardRoomKey(ROOM);
    const refused = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'y' }, { sharingStrategy: 'only_trusted_devices' });
    sendNotice(hs, mallory, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'm.blacklisted',
      room_id: ROOM,
      session_id: refused.content.session_id,
      sender_key: alice.machine.identityKeys.curve25519,
    });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'x' });
    const err = await decryptError(bob, refused);
    expect(err.withheld?.code).toBe('m.unverified');
    expect(err.message).toMatch(/withheld it \(m\.unverified: .+\) for the whole session$/);
    expect(err.message).not.toContain('m.blacklisted');
  });

  it('agree with the code: UnknownMessageIndex does not say the key is missing', async () => {
    const { alice, bob } = await noticeRecipient();
    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    const settings = { sharingStrategy: 'only_trusted_devices' as const };
    const early = await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'before' }, settings);
    await alice.machine.setLocalTrust(BOB, 'BOB', 'verified');
    await alice.sendMessage(ROOM, [ALICE, BOB], { body: 'after' }, settings);
    await bob.sync();
    const err = await decryptError(bob, early);
    expect(err.code).toBe('UnknownMessageIndex');
    expect(err.message).toMatch(/is held only from a later message index than this event's: the sender withheld it \(m\.unverified: .+\) for the messages before the first index we hold$/);
    expect(err.message).not.toMatch(/Can't find|withheld code: None/);
  });

  it('name custom codes plainly', async () => {
    const { hs, alice, bob } = await noticeRecipient();
    const event = await alice.sendMessage(ROOM, [ALICE]);
    sendNotice(hs, alice, {
      algorithm: 'm.megolm.v1.aes-sha2',
      code: 'com.example.retention',
      reason: 'Bots get no history.',
      room_id: ROOM,
      session_id: event.content.session_id,
      sender_key: alice.machine.identityKeys.curve25519,
    });
    await bob.sync();
    const err = await decryptError(bob, event);
    expect(err.message).toBe(
      `the room key for session ${event.content.session_id} is missing: the sender withheld it (com.example.retention: Bots get no history.) for the whole session`,
    );
  });
});
