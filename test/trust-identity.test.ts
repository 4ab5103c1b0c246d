// Other users' identities: verify, a verified identity that changes, pinning a changed identity.
import { describe, expect, it } from 'vitest';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

const ROOM = '!room:example.org';

async function publish(d: TestDevice, reset: boolean): Promise<void> {
  const boot = await d.machine.bootstrapCrossSigning(reset);
  await d.machine.markRequestAsSent(boot.uploadSigningKeys, d.hs.handle(d.userId, d.deviceId, boot.uploadSigningKeys));
  await d.send(boot.uploadSignatures);
}

async function setUp() {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  await publish(alice, false);
  await publish(bob, false);
  for (const [me, other] of [[alice, bob], [bob, alice]] as const) {
    await me.machine.updateTrackedUsers([other.userId]);
    await me.flush();
  }
  return { hs, alice, bob };
}

describe("other users' identities", () => {
  it('verifyUser signs their identity: their cross-signed devices become verified; a later change is a violation until withdrawn', async () => {
    const { alice, bob } = await setUp();
    const before = await alice.machine.getUserIdentity(bob.userId);
    expect(before).toEqual({
      userId: bob.userId,
      isOwn: false,
      masterKey: expect.any(String),
      isVerified: false,
      wasPreviouslyVerified: false,
      hasVerificationViolation: false,
      needsUserApproval: false,
    });
    expect((await alice.machine.getDevice(bob.userId, 'BOB'))).toMatchObject({ isCrossSignedByOwner: true, isCrossSigningTrusted: false, isVerified: false });

    const signature = await alice.machine.verifyUser(bob.userId);
    expect(signature.type).toBe('signature_upload');
    await alice.send(signature);
    // The identity counts as verified once Bob's keys come back with the signature.
    await alice.sync();
    expect(await alice.machine.getUserIdentity(bob.userId)).toMatchObject({ isVerified: true, hasVerificationViolation: false });
    expect((await alice.machine.getDevice(bob.userId, 'BOB'))).toMatchObject({ isCrossSigningTrusted: true, isVerified: true });
    const trusted = await bob.sendMessage(ROOM, [alice.userId, bob.userId], { msgtype: 'm.text', body: 'verified' });
    await alice.sync();
    const verified = await alice.machine.decryptRoomEvent(trusted, ROOM);
    expect(verified.verificationState).toBe('verified');
    // A clear shield has a colour and nothing else.
    expect(verified.shieldState).toStrictEqual({ color: 'none' });
    expect(verified.shieldStateStrict).toStrictEqual({ color: 'none' });

    // Bob replaces his identity: the verified one is gone.
    await publish(bob, true);
    await alice.sync();
    const changed = await alice.machine.getUserIdentity(bob.userId);
    expect(changed).toMatchObject({ isVerified: false, wasPreviouslyVerified: true, hasVerificationViolation: true });
    expect(changed?.masterKey).not.toBe(before?.masterKey);
    await bob.machine.discardRoomKey(ROOM);
    const after = await bob.sendMessage(ROOM, [alice.userId, bob.userId], { msgtype: 'm.text', body: 'new identity' });
    await alice.sync();
    expect(await alice.machine.decryptRoomEvent(after, ROOM)).toMatchObject({ verificationState: 'verification_violation', shieldState: { color: 'red' } });

    await alice.machine.withdrawVerification(bob.userId);
    expect(await alice.machine.getUserIdentity(bob.userId)).toMatchObject({ hasVerificationViolation: false, isVerified: false });
  });

  it('an unverified identity that changes needs approval until pinned', async () => {
    const { alice, bob } = await setUp();
    await publish(bob, true);
    await alice.sync();
    expect(await alice.machine.getUserIdentity(bob.userId)).toMatchObject({ needsUserApproval: true, hasVerificationViolation: false });
    await alice.machine.pinIdentity(bob.userId);
    expect(await alice.machine.getUserIdentity(bob.userId)).toMatchObject({ needsUserApproval: false });
  });

  it('names the bad argument and the missing key', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
    const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
    await publish(bob, false);
    await alice.machine.updateTrackedUsers([bob.userId]);
    await alice.flush();
    expect(await alice.machine.getUserIdentity('@nobody:example.org')).toBeNull();
    await expect(alice.machine.pinIdentity('@nobody:example.org')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'userId' });
    await expect(alice.machine.verifyUser(alice.userId)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'userId' });
    // Alice has no cross-signing keys of her own: she cannot sign Bob.
    await expect(alice.machine.verifyUser(bob.userId)).rejects.toMatchObject({ code: 'CrossSigningKeyMissing' });
    await expect(alice.machine.signOwnDevice('ALICE')).rejects.toMatchObject({ code: 'CrossSigningKeyMissing' });
    await expect(alice.machine.getUserIdentity('bob')).rejects.toMatchObject({ code: 'InvalidArgument', field: 'userId' });
  });
});
