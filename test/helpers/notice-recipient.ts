/**
 * The fixture of the received-notice tests (withheld-receiving, withheld-messages): Bob, who
 * receives room keys and withheld notices, tracks Alice (a sender) and Mallory (who forges
 * notices); anyone can send Bob a hand-made `m.room_key.withheld`.
 */
import { expect } from 'vitest';
import { DecryptionError, type StoreOptions } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';
import { sendToDevice } from './to-device';

export const ALICE = '@alice:example.org';
export const BOB = '@bob:example.org';
export const MALLORY = '@mallory:example.org';
export const ROOM = '!room:example.org';

/** Alice, Bob (on `bobStore`, default memory) and Mallory; Bob knows the other two's devices. */
export async function noticeRecipient(bobStore?: StoreOptions) {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE');
  const bob = await TestDevice.create(hs, BOB, 'BOB', bobStore);
  const mallory = await TestDevice.create(hs, MALLORY, 'MALLORY');
  await bob.machine.updateTrackedUsers([ALICE, MALLORY]);
  await bob.flush();
  return { hs, alice, bob, mallory };
}

/** Send a hand-made withheld notice from `from` to Bob's device, as any client could. */
export function sendNotice(hs: TestHomeserver, from: TestDevice, content: Record<string, unknown>) {
  sendToDevice(hs, from, 'm.room_key.withheld', { [BOB]: { BOB: content } });
}

/** The `DecryptionError` that decrypting `event` in `room` on `device` fails with. */
export async function decryptError(device: TestDevice, event: object, room = ROOM): Promise<DecryptionError> {
  const err: unknown = await device.machine.decryptRoomEvent(event as never, room).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(DecryptionError);
  return err as DecryptionError;
}
