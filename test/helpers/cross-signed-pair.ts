// Two cross-signed users on the in-memory test homeserver, for the verification suites.
import { TestDevice, TestHomeserver } from '../../src/testing/homeserver';

/** A device whose owner bootstrapped cross-signing and uploaded the keys and signatures. */
export async function crossSigned(hs: TestHomeserver, userId: string, deviceId: string): Promise<TestDevice> {
  const d = await TestDevice.create(hs, userId, deviceId);
  const boot = await d.machine.bootstrapCrossSigning(false);
  await d.machine.markRequestAsSent(boot.uploadSigningKeys, hs.handle(userId, deviceId, boot.uploadSigningKeys));
  await d.send(boot.uploadSignatures);
  return d;
}

/** Two cross-signed users who know each other's devices and identities. */
export async function pair(): Promise<{ hs: TestHomeserver; alice: TestDevice; bob: TestDevice }> {
  const hs = new TestHomeserver();
  const alice = await crossSigned(hs, '@alice:example.org', 'ALICE');
  const bob = await crossSigned(hs, '@bob:example.org', 'BOB');
  for (const [me, other] of [[alice, bob], [bob, alice]] as const) {
    await me.machine.updateTrackedUsers([other.userId]);
    await me.flush();
  }
  return { hs, alice, bob };
}
