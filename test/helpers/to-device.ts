/** Hand-made to-device messages on the test homeserver. */
import { randomUUID } from 'node:crypto';
import type { TestHomeserver } from '../../src/testing';

/**
 * Deliver a to-device message of type `eventType` from `from`'s device, as any client could send
 * one (no Olm, no checks): `messages` maps user id -> device id (or `*`) -> content.
 */
export function sendToDevice(
  hs: TestHomeserver,
  from: { userId: string; deviceId: string },
  eventType: string,
  messages: Record<string, Record<string, object>>,
): void {
  const txnId = randomUUID();
  hs.handle(from.userId, from.deviceId, { type: 'to_device', id: txnId, txnId, eventType, body: JSON.stringify({ messages }) });
}
