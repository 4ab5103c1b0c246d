import { describe, it, expect, beforeAll } from 'vitest';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MatrixCryptoError, OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

async function rejects(promise: Promise<unknown>, code: string, field: string) {
  const err = await promise.then(
    () => undefined,
    (e) => e,
  );
  expect(err, `expected a rejection naming ${field}`).toBeInstanceOf(MatrixCryptoError);
  expect(err.code).toBe(code);
  expect(err.field).toBe(field);
  expect(err.message).toContain(field);
}

describe('bad input is rejected with the field named, and the machine stays usable', () => {
  let alice: TestDevice;
  let bob: TestDevice;
  beforeAll(async () => {
    const hs = new TestHomeserver();
    alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
    bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  });

  it('open: malformed user id, store kind, missing or unwritable path', async () => {
    await rejects(OlmMachine.open({ userId: 'alice', deviceId: 'A', store: { kind: 'memory' } }), 'InvalidArgument', 'userId');
    await rejects(OlmMachine.open({ userId: '@a:b.c', deviceId: '', store: { kind: 'memory' } }), 'InvalidArgument', 'deviceId');
    await rejects(OlmMachine.open({ userId: '@a:b.c', deviceId: 'A', store: { kind: 'disk' } as never }), 'InvalidArgument', 'store.kind');
    await rejects(OlmMachine.open({ userId: '@a:b.c', deviceId: 'A', store: { kind: 'sqlite' } as never }), 'InvalidArgument', 'store.path');
    const file = join(mkdtempSync(join(tmpdir(), 'mcn-')), 'a-file');
    writeFileSync(file, 'not a folder');
    await rejects(OlmMachine.open({ userId: '@a:b.c', deviceId: 'A', store: { kind: 'sqlite', path: join(file, 'sub') } }), 'InvalidArgument', 'store.path');
  });

  it('malformed user and room ids', async () => {
    await rejects(alice.machine.updateTrackedUsers(['@ok:example.org', 'not-a-user']), 'InvalidArgument', 'users[1]');
    await rejects(alice.machine.shareRoomKey('not-a-room', [bob.userId]), 'InvalidArgument', 'roomId');
    await rejects(alice.machine.encryptRoomEvent('room', 'm.room.message', {}), 'InvalidArgument', 'roomId');
    await rejects(alice.machine.decryptRoomEvent({ type: 'x', content: {} }, 'nope'), 'InvalidArgument', 'roomId');
    await rejects(alice.machine.getDevice('bob', 'BOB'), 'InvalidArgument', 'userId');
  });

  it('unparsable JSON and wrong shapes', async () => {
    await rejects(alice.machine.decryptRoomEvent('{not json', '!r:example.org'), 'InvalidArgument', 'event');
    await rejects(alice.machine.receiveSyncChanges('{' as never), 'InvalidArgument', 'changes');
    // An entry that is not an event is skipped and reported, not a reason to reject the batch.
    expect((await alice.machine.receiveSyncChanges({ toDeviceEvents: [42 as never] })).skippedToDeviceEvents).toEqual([
      { index: 0, reason: 'toDeviceEvents[0]: must be an event object, got a number' },
    ]);
    await rejects(alice.machine.importRoomKeys('[{"foo":1}]'), 'InvalidArgument', 'keys[0]');
    await rejects(alice.machine.shareRoomKey('!r:example.org', [bob.userId], { sharingStrategy: 'everyone' as never }), 'InvalidArgument', 'settings.sharingStrategy');
    await rejects(alice.machine.shareRoomKey('!r:example.org', [bob.userId], { rotationPeriodMessages: 0 }), 'InvalidArgument', 'settings.rotationPeriodMessages');
    await rejects(alice.machine.setLocalTrust(bob.userId, 'BOB', 'trusted' as never), 'InvalidArgument', 'trust');
  });

  it('unknown request ids, mismatched types and bad responses', async () => {
    await rejects(alice.machine.markRequestAsSent('no-such-id', 'keys_query', '{}'), 'InvalidArgument', 'id');
    await alice.machine.updateTrackedUsers([bob.userId]);
    // The crate may also want a keys upload first (0.19 uploads whenever the last sync gave no
    // one-time-key count); the query for bob is the request under test.
    const query = (await alice.machine.outgoingRequests()).find((r) => r.type === 'keys_query');
    if (query === undefined) throw new Error('no keys_query after updateTrackedUsers');
    await rejects(alice.machine.markRequestAsSent(query.id, 'keys_claim', '{}'), 'InvalidArgument', 'type');
    await rejects(alice.machine.markRequestAsSent(query, '{broken'), 'InvalidArgument', 'response');
    await rejects(alice.machine.markRequestAsSent(query, { device_keys: 7 }), 'InvalidArgument', 'response');
    await rejects(alice.machine.markRequestAsSent(query.id, 'bogus' as never, '{}'), 'InvalidArgument', 'type');
    // Nothing was consumed: the request is still pending and completes normally.
    await alice.send(query);
    expect(await alice.machine.getDevice(bob.userId, 'BOB')).not.toBeNull();
  });

  it('the machine still works after all of the above', async () => {
    const event = await alice.sendMessage('!r:example.org', [alice.userId, bob.userId], { body: 'still fine' });
    await bob.sync();
    expect((await bob.machine.decryptRoomEvent(event, '!r:example.org')).event.content).toMatchObject({ body: 'still fine' });
  });
});
