// One-time keys are made only when the server's counts say they ran low: a call without counts
// must not read as "the server holds none", or every such call queues another 50 keys until the
// homeserver refuses the upload (Synapse: over 500 keys a device) and the response fails.
import { describe, expect, it } from 'vitest';
import type { MatrixEvent } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';

async function uploads(device: TestDevice): Promise<number> {
  return (await device.machine.outgoingRequests()).filter((r) => r.type === 'keys_upload').length;
}

/** How many one-time keys the device's pending uploads carry. */
async function keysToUpload(device: TestDevice): Promise<number> {
  let n = 0;
  for (const r of await device.machine.outgoingRequests()) {
    if (r.type === 'keys_upload') n += Object.keys((JSON.parse(r.body) as { one_time_keys?: object }).one_time_keys ?? {}).length;
  }
  return n;
}

describe('one-time-key counts', () => {
  it('a sync without counts makes no new keys', async () => {
    const hs = new TestHomeserver();
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    expect(await uploads(bob)).toBe(0);
    await bob.machine.receiveSyncChanges({ changedDevices: { changed: [ALICE] } });
    expect(await uploads(bob)).toBe(0);
    await bob.machine.receiveSyncChanges({});
    expect(await uploads(bob)).toBe(0);
  });

  it('counts that say the keys ran out still make new keys', async () => {
    const hs = new TestHomeserver();
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    await bob.machine.receiveSyncChanges({ oneTimeKeyCounts: { signed_curve25519: 0 } });
    expect(await uploads(bob)).toBe(1);
    const given = await TestDevice.create(hs, '@carol:example.org', 'CAROL');
    await given.machine.receiveSyncChanges({ oneTimeKeyCounts: {} }); // given, but no signed_curve25519: zero
    expect(await uploads(given)).toBe(1);
  });

  it('a batch with two Olm messages from one device tops the keys up to 50, no more', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await TestDevice.create(hs, BOB, 'BOB');
    for (const room of ['!one:example.org', '!two:example.org']) {
      for (const r of (await alice.prepareRoom(room, [ALICE, BOB])).requests) await alice.send(r);
    }
    const changes = hs.syncFor(BOB, 'BOB');
    const encrypted = changes.toDeviceEvents.filter((e) => (e as MatrixEvent).type === 'm.room.encrypted');
    expect(encrypted).toHaveLength(2); // two runs: the crate is called once per Olm message of one sender device
    const left = changes.oneTimeKeyCounts.signed_curve25519;
    expect(left).toBe(49); // Alice claimed one of Bob's 50 keys for her Olm session
    const result = await bob.machine.receiveSyncChanges(changes);
    expect(result.roomKeyUpdates.map((u) => u.roomId).sort()).toEqual(['!one:example.org', '!two:example.org']);
    expect(await keysToUpload(bob)).toBe(50 - left);
  });
});
