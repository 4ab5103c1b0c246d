/**
 * The fixture of the key-request tests: Alice's device A1 holds a room key from Bob; her second
 * device A2 joins later, and can get the key only forwarded by A1.
 */
import { TestDevice, TestHomeserver } from '../../src/testing';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';
export const ROOM = '!room:example.org';

/**
 * `event` is Bob's message A1 holds the key of; A2 trusts A1, and A1 trusts A2 unless
 * `verifyA2` is false. Every device knows the others.
 */
export async function secondDeviceJoins({ verifyA2 = true } = {}) {
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
  if (verifyA2) await a1.machine.setLocalTrust(ALICE, 'A2', 'verified');
  return { hs, a1, a2, bob, event };
}
