// Small things a new user meets: the sender device of a forwarded key, one naming style for the
// withheld getters, a bound on what one notice can store, no silent memory store.
import { describe, expect, it } from 'vitest';
import { MatrixCryptoError, OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { ALICE, BOB, ROOM, secondDeviceJoins } from './helpers/second-device';
import { sendToDevice } from './helpers/to-device';

describe('small things', () => {
  it('names the sender device of an event decrypted with a forwarded key, when that device is known', async () => {
    const { a1, a2, event } = await secondDeviceJoins();
    await a2.machine.decryptRoomEvent(event, ROOM).catch(() => undefined);
    await a2.flush();
    await a1.sync();
    await a2.sync();
    const decrypted = await a2.machine.decryptRoomEvent(event, ROOM);
    expect(decrypted.forwardingCurve25519KeyChain).toEqual([a1.machine.identityKeys.curve25519]);
    expect(decrypted.senderDevice).toBe('BOB');
    expect(decrypted.senderDeviceVerified).toBe(false);
  });

  it('reads and writes the withheld settings with get/set methods', async () => {
    const m = await OlmMachine.open({ userId: ALICE, deviceId: 'A', store: { kind: 'memory' }, reactToNoOlm: false });
    expect(m.getReactToNoOlm()).toBe(false);
    expect(m.getWithheldPolicy()).toStrictEqual({ send: 'all', reasons: {} });
    m.setWithheldPolicy({ send: 'none', reasons: { 'm.unverified': 'Verify first.', 'com.example.policy': 'Policy.' } });
    expect(m.getWithheldPolicy()).toStrictEqual({ send: 'none', reasons: { 'com.example.policy': 'Policy.', 'm.unverified': 'Verify first.' } });
    m.setReactToNoOlm(true);
    expect(m.getReactToNoOlm()).toBe(true);
    m.setWithheldPolicy({ send: ['m.unverified'] });
    expect(m.getWithheldPolicy()).toStrictEqual({ send: ['m.unverified'], reasons: {} });
    expect(await m.getNoOlmState(BOB, 'BOB')).toBeNull();
    expect('noOlmState' in m || 'withheldPolicy' in m).toBe(false);
  });

  it('keeps at most 1,024 bytes of a notice reason', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.machine.updateTrackedUsers([ALICE]);
    await bob.flush();
    const reason = 'x'.repeat(1_000_000);
    sendToDevice(hs, alice, 'm.room_key.withheld', {
      [BOB]: { BOB: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.no_olm', reason, sender_key: alice.machine.identityKeys.curve25519, from_device: 'ALICE' } },
    });
    const { withheldNotices } = await bob.sync();
    expect(Buffer.byteLength(withheldNotices[0]!.reason!)).toBeLessThanOrEqual(1024);
    expect(withheldNotices[0]!.reason!.endsWith('…')).toBe(true);
    const [stored] = await bob.machine.getNoOlmNotices(ALICE, 'ALICE');
    expect(stored!.reason).toBe(withheldNotices[0]!.reason);
  });

  it("an unconfirmed notice (sender's devices unknown) is counted apart and never explains another sender's message", async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    const mallory = await TestDevice.create(hs, '@mallory:example.org', 'MALLORY');
    await bob.machine.updateTrackedUsers([ALICE]); // Bob never queries Mallory's devices
    await bob.flush();
    const event = await alice.sendMessage(ROOM, [ALICE]); // Bob does not hold the session
    sendToDevice(hs, mallory, 'm.room_key.withheld', {
      [BOB]: { BOB: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.blacklisted', room_id: ROOM, session_id: event.content.session_id, sender_key: alice.machine.identityKeys.curve25519 } },
    });
    const { withheldNotices } = await bob.sync();
    expect(withheldNotices).toEqual([expect.objectContaining({ sender: mallory.userId, verdict: 'unconfirmed' })]);
    expect(bob.machine.withheldMetrics()).toMatchObject({ unconfirmedNotices: 1, acceptedNotices: 0, spoofedNotices: 0 });
    const err = await bob.machine.decryptRoomEvent(event, ROOM).catch((e) => e);
    expect(err.withheld).toBeNull();
    expect(err.message).not.toContain('m.blacklisted');
  });

  it('rejects open() without a store instead of silently keeping the account in memory', async () => {
    const err = await OlmMachine.open({ userId: ALICE, deviceId: 'A' } as never).catch((e) => e);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err).toMatchObject({ code: 'InvalidArgument', field: 'store' });
    expect(err.message).toMatch(/^store: is required/);
  });

  it('rejects a policy given as a string, naming it', async () => {
    const m = await OlmMachine.open({ userId: ALICE, deviceId: 'A', store: { kind: 'memory' } });
    expect(() => m.setWithheldPolicy('not json' as never)).toThrow(/^policy: must be an object \{ send, reasons \}, got a string$/);
  });
});
