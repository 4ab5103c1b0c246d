/**
 * `matrix-crypto-node/testing`: an in-process homeserver for testing bots and bridges without
 * a server. It routes key uploads, key queries, one-time-key claims, signature uploads and
 * to-device messages between machines in one process.
 *
 * @example
 * ```ts
 * import { TestHomeserver, TestDevice } from 'matrix-crypto-node/testing';
 * const hs = new TestHomeserver();
 * const alice = await TestDevice.create(hs, '@alice:example.org', 'A');
 * const bob = await TestDevice.create(hs, '@bob:example.org', 'B');
 * const event = await alice.sendMessage('!room:example.org', [alice.userId, bob.userId], { body: 'hi' });
 * await bob.sync();
 * console.log((await bob.machine.decryptRoomEvent(event, '!room:example.org')).event.content);
 * ```
 *
 * @module matrix-crypto-node/testing
 */
export { TestHomeserver, TestDevice } from './homeserver';
export type { SentToDeviceMessage, LoggedRequest } from './homeserver';
