// Scenario 1: our bot (EncryptedClient, its device cross-signed) and a matrix-js-sdk user in strict
// mode (exclude insecure devices, MSC4153) in an encrypted room on Synapse.
import { describe, expect, it } from 'vitest';
import { syncUntil, syncUntilDecrypted, useHomeserver, useParticipants } from './harness';
import { waitFor } from './js-sdk-user';

const { hs, logs } = useHomeserver();
const { jsUser, bot } = useParticipants(hs, logs);

describe('scenario 1: our bot and a js-sdk user in an encrypted room', () => {
  it('messages decrypt both ways', async () => {
    const [alice, b] = await Promise.all([jsUser('alice1'), bot('bot1')]);
    const roomId = await alice.createEncryptedRoom([b.userId]);
    await b.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, b.userId);
    // alice's client shares keys with the bot and decrypts its messages because the bot's own
    // identity signed its device.
    await waitFor('js-sdk to see the bot device cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(b.userId, b.deviceId))?.signedByOwner ? true : undefined,
    );

    const fromAlice = await alice.sendText(roomId, 'hello bot');
    const got = await syncUntilDecrypted(b, fromAlice);
    expect(got.decrypted.event.content).toMatchObject({ msgtype: 'm.text', body: 'hello bot' });
    expect(got.decrypted.sender).toBe(alice.user.userId);
    expect(got.decrypted.senderDevice).toBe(alice.user.deviceId);

    const sent = await b.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'hello alice' });
    expect(sent.share.sharedWith).toContainEqual({ userId: alice.user.userId, deviceId: alice.user.deviceId });
    const seen = await alice.waitForDecrypted(roomId, sent.eventId);
    expect(seen).toMatchObject({ sender: b.userId, type: 'm.room.message', content: { body: 'hello alice' } });

    // A reply in the same session on both sides.
    const reply = await alice.sendText(roomId, 'and back again');
    expect((await syncUntilDecrypted(b, reply)).decrypted.event.content.body).toBe('and back again');
    const second = await b.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'second' });
    expect((await alice.waitForDecrypted(roomId, second.eventId)).content.body).toBe('second');
  });

  it('a bot that joins late cannot read the history, with the right error', async () => {
    const [alice, b] = await Promise.all([jsUser('alice2'), bot('bot2')]);
    const roomId = await alice.createEncryptedRoom([]);
    const before = [await alice.sendText(roomId, 'before the bot 1'), await alice.sendText(roomId, 'before the bot 2')];
    await alice.client.invite(roomId, b.userId);
    await b.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, b.userId);
    const after = await alice.sendText(roomId, 'after the bot joined');

    const got = await syncUntilDecrypted(b, after);
    expect(got.decrypted.event.content.body).toBe('after the bot joined');
    const history = await syncUntil(b, 'the history events', (items) => {
      const found = before.map((id) => items.find((i) => i.event.event_id === id));
      return found.every((i) => i !== undefined) ? found : undefined;
    });
    // js-sdk discards its outbound session when someone else's membership changes to anything
    // but join (here: the invite), so the history was encrypted in a session the bot never got.
    const historySessions = new Set(history.map((i) => i!.event.content.session_id));
    expect(historySessions.size).toBe(1);
    expect(historySessions.has(got.event.content.session_id)).toBe(false);
    for (const item of history) {
      expect(item!.kind).toBe('undecryptable');
      if (item!.kind !== 'undecryptable') continue;
      // Nobody withheld anything: the key simply never reached us.
      expect(item.error).toMatchObject({ code: 'MissingRoomKey', sessionId: item.event.content.session_id, withheldCode: null });
    }
  });
});
