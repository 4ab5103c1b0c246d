// Small things a new user meets: the sender device of a forwarded key, one naming style for the
// withheld getters, a bound on what one notice can store, no silent memory store.
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { MatrixCryptoError, OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const ROOM = '!room:example.org';

describe('small things', () => {
  it('names the sender device of an event decrypted with a forwarded key, when that device is known', async () => {
    const hs = new TestHomeserver();
    const a1 = await TestDevice.create(hs, ALICE, 'A1');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    const event = await bob.sendMessage(ROOM, [ALICE, BOB], { body: 'secret' });
    await a1.sync();
    const a2 = await TestDevice.create(hs, ALICE, 'A2');
    for (const d of [a1, a2]) {
      await d.machine.updateTrackedUsers([ALICE, BOB]);
      await d.sync();
    }
    await a2.machine.setLocalTrust(ALICE, 'A1', 'verified');
    await a1.machine.setLocalTrust(ALICE, 'A2', 'verified');
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
    m.setReactToNoOlm(true);
    expect(m.getReactToNoOlm()).toBe(true);
    m.setWithheldPolicy({ send: ['m.unverified'] });
    expect(m.getWithheldPolicy()).toEqual({ send: ['m.unverified'], reasons: {} });
    expect(await m.getNoOlmState(BOB, 'BOB')).toBeNull();
    expect('noOlmState' in m || 'withheldPolicy' in m).toBe(false);
  });

  it('keeps at most 1,024 bytes of a notice reason', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.machine.updateTrackedUsers([ALICE]);
    await bob.flush();
    const txnId = randomUUID();
    const reason = 'x'.repeat(1_000_000);
    hs.handle(ALICE, 'ALICE', {
      type: 'to_device',
      id: txnId,
      txnId,
      eventType: 'm.room_key.withheld',
      body: JSON.stringify({ messages: { [BOB]: { BOB: { algorithm: 'm.megolm.v1.aes-sha2', code: 'm.no_olm', reason, sender_key: alice.machine.identityKeys.curve25519, from_device: 'ALICE' } } } }),
    });
    const { withheldNotices } = await bob.sync();
    expect(Buffer.byteLength(withheldNotices[0]!.reason!)).toBeLessThanOrEqual(1024);
    expect(withheldNotices[0]!.reason!.endsWith('…')).toBe(true);
    const [stored] = await bob.machine.getNoOlmNotices(ALICE, 'ALICE');
    expect(stored!.reason).toBe(withheldNotices[0]!.reason);
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
